"""The settings a model adapts with: one place, used by compress, bench and the Python API.

An AdaptationConfig may leave unset (None) which parameters adapt: they are then
the ones the model's manifest entry recommends (``"adaptation": {"parameters": ...}``),
else DEFAULT_PARAMETERS.  The same for the learning rate: the entry's rate for
that selection (``"learning_rates": {"last": ...}``), else its ``"learning_rate"``,
else DEFAULT_LEARNING_RATE.  A VAE wants far smaller steps than a flow (its loss
is a one-sample ELBO and every layer adapts), and an engine-2 flow's 7-bit weights
move a whole grid step when they move, so every layer of v7 adapts at a sixth of
the rate its last layers alone want (docs/PERFORMANCE.md, "v7: adaptation that
pays"): a rate that suits one model or selection measures a setting the other is
never used with.  Archives record every setting used, so this only ever chooses
for an encoder.
"""
from __future__ import annotations

import dataclasses

from ..models.catalog import available_models, recommended_learning_rate, recommended_parameters
from .config import DEFAULT_LEARNING_RATE, AdaptationConfig

# The parameter selection of a model whose manifest entry chooses none.
DEFAULT_PARAMETERS = "all"


def adaptation_for(model: str, config: AdaptationConfig | None = None) -> AdaptationConfig:
    """``config`` (default settings if None) with what it leaves unset taken from ``model``.

    The selection is resolved first, so that an unset rate is the one the model's
    entry recommends for the parameters that will adapt (a level or ``--adapt-params
    last`` that leaves the rate unset gets the last layers' rate)."""
    config = AdaptationConfig() if config is None else config
    if config.learning_rate is not None and config.parameters is not None:
        return config
    entry = available_models().get(model, {})
    parameters = config.parameters or recommended_parameters(entry) or DEFAULT_PARAMETERS
    rate = config.learning_rate
    if rate is None:
        rate = recommended_learning_rate(entry, parameters)
    return dataclasses.replace(config, parameters=parameters,
                               learning_rate=DEFAULT_LEARNING_RATE if rate is None else rate)
