"""The adaptation settings: everything the decoder must replay, recorded in the header.

Every check of the settings is here (``__post_init__``), so the command line,
the Python API, the benchmark and the decoder (a header is data from outside)
refuse the same values with the same message.  The learning rate depends on
the model: left unset (None), it is the model's own, resolved by
``adapt.defaults.adaptation_for`` before anything is coded.  Why each default
has its value, with the measurements: docs/PERFORMANCE.md ("Adaptation
defaults").  Kept free of torch so that the command line can show its
defaults quickly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

PARAMETER_SELECTIONS = ("all", "last", "bias")
MAX_CHAIN_BATCHES = 1024  # a chain's length takes two bytes in its head; this bounds the encoder's memory
SEGMENT_BATCHES = 0  # the default segment size: one segment (see AdaptationConfig.segment_batches)
MAX_BATCH_SIZE = 1024  # the command line's limit too; batch_pixels never makes a batch larger
OPTIMIZERS = ("adam",)
# The learning rate of a model whose manifest entry recommends none (the flows).
DEFAULT_LEARNING_RATE = 3e-4
# What a header written before a setting existed meant by leaving it out
# (format 1.0 had none of these, 1.1 not the last three, 1.2 not the last two,
# 1.3 not the last): old archives decode as they were written even when a
# default below changes.
LEGACY_VALUES = {"batch_pixels": 0, "give_up_after": 0, "gray_parameters": "", "batch_pixels_max": 0,
                 "gray_batch_pixels": 0, "chain_batches": 1,
                 # every header has it (format 1.0 on); should one lack it, it means one segment
                 "segment_batches": 0}


# Settings a model's manifest entry may choose (``"adaptation": {...}``): None in a
# config until adapt.defaults.adaptation_for resolves them; the type each must have.
MODEL_CHOICES = {"learning_rate": float, "parameters": str}


@dataclass(frozen=True)
class AdaptationConfig:
    """Everything the decoder must know to replay the adaptation (all in the header)."""

    adapt: bool = True
    # None: the model's own rate for the parameters that adapt (adapt.defaults.adaptation_for);
    # a header always holds a number.
    learning_rate: float | None = None
    steps_per_batch: int = 1
    batch_size: int = 8
    # A tile is coded without its neighbours: larger tiles lose less at their borders and at
    # the coarse levels.  Even, so that every level of the flow halves it.
    tile_size: int = 128
    optimizer: str = "adam"
    # The model restarts from θ0 every this many batches (0: never), so that
    # segments are independent of each other: coded and decoded side by side
    # (-T), or on other machines.  One segment by default: a restart pays the
    # adaptation's gain so far once more, and every cut measured on RGB tiles cost
    # more than 0.3% (docs/PERFORMANCE.md, "Every core by default").
    segment_batches: int = SEGMENT_BATCHES
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    # Which parameters take optimiser steps: "all"; "last" (the last layer of
    # every predictor, plus the final prior); "bias" (biases and the prior).
    # None: the model's own choice (adapt.defaults.adaptation_for), else "all";
    # a header always holds a selection.
    parameters: str | None = None
    # Early stopping: no more steps after this many batches of a segment (0: never stop).
    adapt_batches: int = 0
    # Never worse than frozen: per batch, the encoder may code with θ0 (a flag
    # byte per batch tells the decoder).  The decoder obeys the flags whatever
    # this says; it is recorded for `info`.
    guard: bool = True
    # Small tiles are batched by pixels, not by count: a batch of h x w tiles
    # holds max(batch_size, batch_pixels // (h * w)) of them (0: always
    # batch_size), since per-batch overhead dominates small tiles.  32768 pixels
    # is what 64 x 64 tiles get from batch_size: 32 x 32 tiles go 32 to a batch,
    # 28 x 28 colour images 41.  Against 16384: 0.83-0.90x the CPU of tiles32_2048 both
    # ways, 0.16-0.39% larger on 32 x 32 colour tiles (docs/PERFORMANCE.md, "Small
    # colour tiles, 32 to a batch").
    batch_pixels: int = 32768
    # Encoder policy: once θ0 has beaten the adapted model this many times in
    # a row, the encoder codes the rest of the segment's batches of that
    # channel count with θ0 and stops adapting them (FLAG_GIVE_UP tells the
    # decoder).  0: never.  Recorded for `info`; the decoder obeys the flag
    # whatever this says.  Adam's first steps are large, so θ0 may win the
    # first few comparisons of data that adaptation later pays on; with v7,
    # 4 in a row (8 through release 1.11.0) gave the same bytes within 0.07% on
    # every evaluation set and ~10-20% less CPU where θ0 keeps winning
    # (docs/PERFORMANCE.md, "Adaptation defaults").
    give_up_after: int = 4
    # Which parameters of the grey network take steps ("": as `parameters`).
    # A grey pixel costs the network as much as an RGB one for a third of the
    # bytes; "last" (no gradient then flows into the big layers) keeps most of
    # the speed and part of adaptation's gain.
    gray_parameters: str = "last"
    # Large tiles are batched by pixels too: a batch of h x w tiles holds at
    # most max(1, batch_pixels_max // (h * w)) of them (0: no cap), which
    # bounds a batch's memory: 128 x 128 tiles go four to a batch, 256 x 256 one.
    batch_pixels_max: int = 65536
    # batch_pixels for grey (one-channel) tiles (0: as batch_pixels).  Grey
    # networks adapt their last layers only, whose steps are small, so a step
    # on more pixels loses nothing, and every batch costs framing and a fixed
    # share of CPU.
    gray_batch_pixels: int = 65536
    # Bits-back models (the VAE) lay up to this many consecutive batches of a
    # segment on one ANS stack (1: each batch its own stack), so that only the
    # batch coded first pays for its latents without bits back (HiLLoC's
    # initial bits).  The encoder keeps one copy of the weights per batch of a
    # chain; the decoder streams.  Flows ignore it.
    chain_batches: int = 16

    def __post_init__(self) -> None:
        for field in fields(self):  # a header is data from outside: check the types too
            value = getattr(self, field.name)
            wanted = MODEL_CHOICES.get(field.name, type(field.default))
            if value is None and field.name in MODEL_CHOICES:
                continue
            allowed = (int, float) if wanted is float else wanted
            if not isinstance(value, allowed) or (wanted is not bool and isinstance(value, bool)):
                raise ValueError(f"adaptation setting {field.name} must be {wanted.__name__}, "
                                 f"not {type(value).__name__}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}")
        if self.tile_size < 2 or self.tile_size % 2:
            raise ValueError(f"the tile size must be even and at least 2, not {self.tile_size}")
        if self.batch_size < 1:
            raise ValueError("the batch size must be at least 1")
        if self.steps_per_batch < 0 or self.segment_batches < 0:
            raise ValueError("steps per batch and the segment size must not be negative")
        for selection in (self.parameters, self.gray_parameters or self.parameters):
            if selection is not None and selection not in PARAMETER_SELECTIONS:
                raise ValueError(f"unknown parameter selection {selection!r} "
                                 f"(one of {', '.join(PARAMETER_SELECTIONS)})")
        if not 1 <= self.chain_batches <= MAX_CHAIN_BATCHES:
            raise ValueError(f"chain_batches must be from 1 to {MAX_CHAIN_BATCHES}")
        if self.adapt_batches < 0:
            raise ValueError("adapt_batches must not be negative")
        if min(self.batch_pixels, self.give_up_after, self.batch_pixels_max, self.gray_batch_pixels) < 0:
            raise ValueError("batch_pixels, gray_batch_pixels, batch_pixels_max and give_up_after must not be "
                             "negative")

    def parameters_for(self, channels: int) -> str:
        """The parameter selection that adapts for images of this many channels."""
        return (self.gray_parameters or self.parameters) if channels == 1 else self.parameters

    def batch_size_for(self, height: int, width: int, channels: int) -> int:
        """How many h x w tiles of this many channels one batch holds (the decoder plans the same)."""
        count = self.batch_size
        pixels = (self.gray_batch_pixels or self.batch_pixels) if channels == 1 else self.batch_pixels
        if pixels:
            count = max(count, min(MAX_BATCH_SIZE, pixels // (height * width)))
        if self.batch_pixels_max:
            count = min(count, max(1, self.batch_pixels_max // (height * width)))
        return count

    def to_header(self) -> dict:
        unresolved = [name for name in MODEL_CHOICES if getattr(self, name) is None]
        if unresolved:
            raise ValueError(f"{', '.join(unresolved)} not resolved (adapt.defaults.adaptation_for)")
        return asdict(self)

    @classmethod
    def from_header(cls, values: dict) -> "AdaptationConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown adaptation settings {sorted(unknown)}")
        config = cls(**{**LEGACY_VALUES, **values})
        unresolved = [name for name in MODEL_CHOICES if getattr(config, name) is None]
        if unresolved:
            raise ValueError(f"the header records no {', '.join(unresolved)}")
        return config
