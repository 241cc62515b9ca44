"""Compression levels -1 ... -9: named bundles of existing adaptation settings.

A level only chooses values the user could also give one by one (the model and
the AdaptationConfig fields); the archive records the resulting settings as
always, so the decoder knows nothing of levels and every level decodes with any
release that knows the settings.  An option given explicitly wins over its
level's value (the command line decides which options were given).

Speed comes from adapting less (the frozen model needs one forward pass per
batch and no backward pass; last-layer updates need no gradient through the
big layers; stopping after some batches), size from adapting more (more
parameters, more steps, never giving up).  Level 6 is release 1.6's defaults
exactly, so an archive written without a level is the same as before levels
existed.  Measured: docs/PERFORMANCE.md, "Compression levels"
(benchmarks/presets.py).

Kept free of torch, like config.py, so that `--help` stays fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Mapping

from .config import AdaptationConfig

DEFAULT_LEVEL = 6


@dataclass(frozen=True)
class Preset:
    """One level: a description for --help (one line there: at most 44 characters) and the settings it changes
    from AdaptationConfig's defaults (None for `model`: the default model)."""

    level: int
    summary: str
    settings: Mapping[str, object] = field(default_factory=dict)
    model: str | None = None

    def __post_init__(self) -> None:
        known = {f.name for f in fields(AdaptationConfig)}
        unknown = set(self.settings) - known
        if unknown:
            raise ValueError(f"level {self.level}: unknown settings {sorted(unknown)}")
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))

    def config(self, **explicit) -> AdaptationConfig:
        """The level's AdaptationConfig, with the explicitly given settings on top."""
        return AdaptationConfig(**{**self.settings, **explicit})


PRESETS: Mapping[int, Preset] = MappingProxyType({preset.level: preset for preset in (
    Preset(1, "frozen model, no adaptation (fastest)",
           {"adapt": False, "guard": False, "batch_pixels": 65536, "gray_batch_pixels": 65536}),
    Preset(2, "last layers adapt, first 16 batches only",
           {"parameters": "last", "gray_parameters": "last", "adapt_batches": 16, "give_up_after": 4}),
    Preset(3, "last layers adapt, giving up early",
           {"parameters": "last", "gray_parameters": "last", "give_up_after": 4}),
    Preset(4, "last layers adapt",
           {"parameters": "last", "gray_parameters": "last"}),
    Preset(5, "as 6, first 32 batches adapt, then frozen",
           {"adapt_batches": 32}),
    Preset(6, "default: all layers adapt (grey: last)", {}),
    Preset(7, "as 6, two steps per batch",
           {"steps_per_batch": 2}),
    Preset(8, "as 6, three steps per batch",
           {"steps_per_batch": 3}),
    Preset(9, "four steps, never giving up (smallest)",
           {"steps_per_batch": 4, "give_up_after": 0}),
)})


def preset(level: int) -> Preset:
    try:
        return PRESETS[level]
    except KeyError:
        raise ValueError(f"no compression level {level} (1 to 9)") from None
