"""Compression levels -1 ... -9: named bundles of existing adaptation settings.

A level only chooses values the user could also give one by one (the model and
the AdaptationConfig fields); the archive records the resulting settings as
always, so the decoder knows nothing of levels and every level decodes with any
release that knows the settings.  An option given explicitly wins over its
level's value (the command line decides which options were given).

Speed comes from adapting less: the frozen model needs one forward pass per
batch, no backward pass and no guard (and its coding pass tells per-image triage
what each image costs, so triage codes no samples of its own: pack.py); -1 also
codes grey images with a smaller network (FAST_MODEL: the default's colour network
beside a grey one of half the width and two thirds the depth); the
middle levels adapt the last layers only (no gradient into the big layers; at the
model's rate for them, v7's 3e-4) on the first 4 to 32 batches of each kind of image,
and -2 and -3 give up once θ0 wins 2 or 4 comparisons in a row (then decoding stops
adapting too).  Size comes from adapting more carefully (more, smaller steps;
never giving up) and from fewer grey batches, each of which costs its framing.
Level 6 is the defaults exactly, so an archive written without a level is the same
as one written before levels existed.  Measured: docs/PERFORMANCE.md, "Compression
levels" (benchmarks/presets.py).

Kept free of torch, like config.py, so that `--help` stays fast.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Mapping

from ..models.catalog import DEFAULT_MODEL, FAST_MODEL
from .config import AdaptationConfig
from .defaults import adaptation_for

DEFAULT_LEVEL = 6
# The upper levels' batches: small colour tiles 16 Ki pixels to a batch (more steps: smaller,
# at more CPU per pixel); grey batches and the cap on a batch's pixels 72 Ki pixels rather
# than 64 Ki, fewer grey batches (each costs ~34 bytes of framing and stream ends) while
# 128 x 128 colour tiles stay four to a batch (six lost 0.3% on photos768 at four steps).
UPPER_BATCHES = {"batch_pixels": 16384, "gray_batch_pixels": 73728, "batch_pixels_max": 73728}


@dataclass(frozen=True)
class Preset:
    """One level: a description for --help (one line there: at most 44 characters) and the settings it changes
    from AdaptationConfig's defaults (None for `model`: the default model).

    ``rate_scale`` scales the model's own learning rate (adapt.defaults.adaptation_for)
    rather than naming one: a rate suits one model family only (a VAE's is ~30x below a
    flow's), and a level applies to whichever model is chosen.
    """

    level: int
    summary: str
    settings: Mapping[str, object] = field(default_factory=dict)
    model: str | None = None
    rate_scale: float = 1.0

    def __post_init__(self) -> None:
        known = {f.name for f in fields(AdaptationConfig)}
        unknown = set(self.settings) - known
        if unknown:
            raise ValueError(f"level {self.level}: unknown settings {sorted(unknown)}")
        if "learning_rate" in self.settings:
            raise ValueError(f"level {self.level}: a level scales the model's learning rate (rate_scale)")
        if not self.rate_scale > 0:
            raise ValueError(f"level {self.level}: the rate scale must be positive")
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))

    def config(self, model: str | None = None, **explicit) -> AdaptationConfig:
        """The level's AdaptationConfig for ``model`` (None: the level's model, else the
        default one), with the explicitly given settings on top.  The learning rate is
        left unset (the model's own) unless the level scales it or it is given."""
        config = AdaptationConfig(**{**self.settings, **explicit})
        if config.learning_rate is not None or self.rate_scale == 1:
            return config
        name = model or self.model or DEFAULT_MODEL
        # Three significant digits: the header records a rate that reads as it was meant (2e-4).
        rate = float(f"{adaptation_for(name, config).learning_rate * self.rate_scale:.3g}")
        return dataclasses.replace(config, learning_rate=rate)


# -1's batches: twice the default's pixels (grey and small tiles; large ones eight 128 x 128
# tiles): fewer batches cost less framing and less per-batch work, and a frozen pass keeps no
# activations for a backward pass (651 MiB peak on a photo against the default's 701).
FROZEN_BATCHES = {"batch_pixels": 131072, "gray_batch_pixels": 131072, "batch_pixels_max": 131072}
LAST_LAYERS = {"parameters": "last", "gray_parameters": "last"}

PRESETS: Mapping[int, Preset] = MappingProxyType({preset.level: preset for preset in (
    Preset(1, "frozen model, small grey network (fastest)",
           {"adapt": False, "guard": False, **FROZEN_BATCHES}, model=FAST_MODEL),
    Preset(2, "last layers adapt on 4 batches at most",
           {**LAST_LAYERS, "adapt_batches": 4, "give_up_after": 2}),
    Preset(3, "last layers adapt on 8 batches at most",
           {**LAST_LAYERS, "adapt_batches": 8, "give_up_after": 4}),
    Preset(4, "last layers adapt on 16 batches at most",
           {**LAST_LAYERS, "adapt_batches": 16}),
    Preset(5, "as 6, adapting on 32 batches at most",
           {"adapt_batches": 32}),
    Preset(6, "default: one step a batch, guarded", {}),
    Preset(7, "two steps per batch at 2/3 the rate",
           {"steps_per_batch": 2, **UPPER_BATCHES}, rate_scale=2 / 3),
    Preset(8, "three steps per batch at 2/3 the rate",
           {"steps_per_batch": 3, **UPPER_BATCHES}, rate_scale=2 / 3),
    Preset(9, "four steps at 2/3 the rate (smallest)",
           {"steps_per_batch": 4, "give_up_after": 0, **UPPER_BATCHES}, rate_scale=2 / 3),
)})


def preset(level: int) -> Preset:
    try:
        return PRESETS[level]
    except KeyError:
        raise ValueError(f"no compression level {level} (1 to 9)") from None
