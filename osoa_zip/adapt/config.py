"""The adaptation settings: everything the decoder must replay, recorded in the header.

Kept free of torch so that the command line can show its defaults quickly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

PARAMETER_SELECTIONS = ("all", "last", "bias")


@dataclass(frozen=True)
class AdaptationConfig:
    """Everything the decoder must know to replay the adaptation (all in the header)."""

    # Defaults from benchmarks/tune_adaptation.py on tuning sets kept apart
    # from evaluation (see README, "Results").
    adapt: bool = True
    learning_rate: float = 3e-4
    steps_per_batch: int = 1
    batch_size: int = 8
    tile_size: int = 64
    optimizer: str = "adam"
    # The model restarts from θ0 every this many batches (0: never), so that
    # segments are independent of each other.
    segment_batches: int = 0
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    # Which parameters take optimiser steps: "all"; "last" (the last layer of
    # every predictor, plus the final prior); "bias" (biases and the prior).
    parameters: str = "all"
    # Early stopping: no more steps after this many batches of a segment (0: never stop).
    adapt_batches: int = 0
    # Never worse than frozen: per batch, the encoder may code with θ0 or undo
    # the last update (one flag byte per batch tells the decoder).  The decoder
    # obeys the flags whatever this says; it is recorded for `info`.
    guard: bool = True

    def __post_init__(self) -> None:
        if self.parameters not in PARAMETER_SELECTIONS:
            raise ValueError(f"unknown parameter selection {self.parameters!r} "
                             f"(one of {', '.join(PARAMETER_SELECTIONS)})")
        if self.adapt_batches < 0:
            raise ValueError("adapt_batches must not be negative")

    def to_header(self) -> dict:
        return asdict(self)

    @classmethod
    def from_header(cls, values: dict) -> "AdaptationConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown adaptation settings {sorted(unknown)}")
        return cls(**values)
