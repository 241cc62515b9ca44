"""The settings a model adapts with: one place, used by compress, bench and the Python API.

An AdaptationConfig may leave the learning rate unset (None): it is then the rate
the model's manifest entry recommends (``"adaptation": {"learning_rate": ...}``),
else DEFAULT_LEARNING_RATE.  The same for which parameters adapt
(``"parameters"``, else DEFAULT_PARAMETERS): an engine-2 flow's 7-bit weights
move a whole grid step when they move, so it adapts its last layers only.
A VAE wants far smaller steps than a flow (its loss is a one-sample ELBO and
every layer adapts), so a rate that suits one model family measures a setting
the other is never used with.  Archives record the
rate used, so this only ever chooses for an encoder.
"""
from __future__ import annotations

import dataclasses

from ..models.catalog import available_models, recommended_learning_rate, recommended_parameters
from .config import DEFAULT_LEARNING_RATE, AdaptationConfig

# The parameter selection of a model whose manifest entry chooses none.
DEFAULT_PARAMETERS = "all"


def adaptation_for(model: str, config: AdaptationConfig | None = None) -> AdaptationConfig:
    """``config`` (default settings if None) with what it leaves unset taken from ``model``."""
    config = AdaptationConfig() if config is None else config
    if config.learning_rate is not None and config.parameters is not None:
        return config
    entry = available_models().get(model, {})
    rate = recommended_learning_rate(entry)
    chosen = {"learning_rate": DEFAULT_LEARNING_RATE if rate is None else rate,
              "parameters": recommended_parameters(entry) or DEFAULT_PARAMETERS}
    return dataclasses.replace(config, **{name: value for name, value in chosen.items()
                                          if getattr(config, name) is None})
