"""The adaptation settings: everything the decoder must replay, recorded in the header.

Kept free of torch so that the command line can show its defaults quickly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields


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

    def to_header(self) -> dict:
        return asdict(self)

    @classmethod
    def from_header(cls, values: dict) -> "AdaptationConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown adaptation settings {sorted(unknown)}")
        return cls(**values)
