"""The settings a model adapts with: one place, used by compress, bench and the Python API.

An AdaptationConfig may leave the learning rate unset (None): it is then the rate
the model's manifest entry recommends (``"adaptation": {"learning_rate": ...}``),
else DEFAULT_LEARNING_RATE.  A VAE wants far smaller steps than a flow (its loss
is a one-sample ELBO and every layer adapts), so a rate that suits one model
family measures a setting the other is never used with.  Archives record the
rate used, so this only ever chooses for an encoder.
"""
from __future__ import annotations

import dataclasses

from ..models.catalog import available_models, recommended_learning_rate
from .config import DEFAULT_LEARNING_RATE, AdaptationConfig


def adaptation_for(model: str, config: AdaptationConfig | None = None) -> AdaptationConfig:
    """``config`` (default settings if None) with what it leaves unset taken from ``model``."""
    config = AdaptationConfig() if config is None else config
    if config.learning_rate is not None:
        return config
    rate = recommended_learning_rate(available_models().get(model, {}))
    return dataclasses.replace(config, learning_rate=DEFAULT_LEARNING_RATE if rate is None else rate)
