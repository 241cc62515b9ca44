"""The adaptation settings: everything the decoder must replay, recorded in the header.

Kept free of torch so that the command line can show its defaults quickly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

PARAMETER_SELECTIONS = ("all", "last", "bias")
MAX_CHAIN_BATCHES = 1024  # a chain's length takes two bytes in its head; this bounds the encoder's memory
SEGMENT_BATCHES = 0  # the default segment size: one segment (see AdaptationConfig.segment_batches)
MAX_BATCH_SIZE = 1024  # the command line's limit too; batch_pixels never makes a batch larger
# What a header written before a setting existed meant by leaving it out
# (format 1.0 had none of these, 1.1 not the last three, 1.2 not the last two,
# 1.3 not the last): old archives decode as they were written even when a
# default below changes.
LEGACY_VALUES = {"batch_pixels": 0, "give_up_after": 0, "gray_parameters": "", "batch_pixels_max": 0,
                 "gray_batch_pixels": 0, "chain_batches": 1,
                 # every header has it (format 1.0 on); should one lack it, it means one segment
                 "segment_batches": 0}


@dataclass(frozen=True)
class AdaptationConfig:
    """Everything the decoder must know to replay the adaptation (all in the header)."""

    # Defaults from benchmarks/tune_adaptation.py on tuning sets kept apart
    # from evaluation (see README, "Results").
    adapt: bool = True
    learning_rate: float = 3e-4
    steps_per_batch: int = 1
    batch_size: int = 8
    # 128, not 64 (release 1.4): a tile is coded without its neighbours, so larger
    # tiles lose less at their borders and at the coarse levels; images up to
    # 64 x 64 are one tile either way.  photos768 with v6, adapted / frozen bytes:
    # tile 64 1124011 / 1126032, 128 1112956 / 1117689, 256 1114091 / 1113832
    # (one 256 tile a batch: adaptation no longer paid).
    tile_size: int = 128
    optimizer: str = "adam"
    # The model restarts from θ0 every this many batches (0: never), so that
    # segments are independent of each other: coded and decoded side by side
    # (-T), or on other machines.  One segment by default: a restart pays the
    # adaptation's gain so far once more, and on RGB tiles that gain kept growing
    # for as long as we measured, so every cut cost more than the 0.3% allowed
    # (tiles32: +1.36% every 32 batches, +0.64% at 64 of 128, +0.56% at 256 of 512;
    # benchmarks/segment_cost.py, docs/PERFORMANCE.md "Every core by default").
    # Every header records the value it was written with.
    segment_batches: int = SEGMENT_BATCHES
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
    # Small tiles are batched by pixels, not by count: a batch of h x w tiles
    # holds max(batch_size, batch_pixels // (h * w)) of them (0: always
    # batch_size).  Per-batch overhead dominates small tiles; 28 x 28 images
    # go 20 to a batch, 32 x 32 tiles 16, 64 x 64 tiles stay at batch_size.
    # Measured in docs/PERFORMANCE.md (format 1.1).
    batch_pixels: int = 16384
    # Encoder policy (format 1.1): once θ0 has beaten the adapted model this
    # many times in a row, the encoder codes the rest of the segment's batches
    # of that channel count with θ0 and stops adapting them (FLAG_GIVE_UP
    # tells the decoder).  0: never.  Recorded for `info`; the decoder obeys
    # the flag whatever this says.  8, not 3: with v5, θ0 won the first three
    # comparisons on photos768 (Adam's first steps are large) and adaptation
    # paid 0.3% later; 8 gave the same bytes on the other sets.
    give_up_after: int = 8
    # Which parameters of the grey network take steps (format 1.1; "": as
    # `parameters`).  A grey pixel costs the network as much as an RGB one for
    # a third of the bytes: with "all", grey photo tiles ran at 0.13-0.18 MB/s;
    # with "last" (no gradient then flows into the big layers) at 0.26-0.29,
    # keeping about 40% of adaptation's gain there (docs/PERFORMANCE.md).
    gray_parameters: str = "last"
    # Large tiles are batched by pixels too (format 1.2): a batch of h x w
    # tiles holds at most max(1, batch_pixels_max // (h * w)) of them (0: no
    # cap).  128 x 128 tiles go four to a batch (256 x 256 one); 64 x 64 and
    # smaller tiles are below the cap.  Without it, eight 128 x 128 tiles took
    # 900 MB, and eight 256 x 256 ones 2.2 GB and coded worse (fewer steps).
    batch_pixels_max: int = 65536
    # batch_pixels for grey (one-channel) tiles (format 1.3; 0: as batch_pixels).
    # Grey networks adapt their last layers only, whose steps are small, so a
    # step on more pixels loses nothing, and every batch costs ~40 bytes of
    # framing and a fixed share of CPU.  Bytes at 16384 / 32768 / 65536, model v6:
    # gray32 49359 / 49239 / 49195, Fashion-MNIST 161788 / 161313 / 161080,
    # gray32_2048 798367 / 796557 / 795967, fashion_mnist_10000 3124007 /
    # 3114644 / 3108913 (v5 alike); decoding gray32_2048 9.2 s -> 7.4 s at 32768.
    gray_batch_pixels: int = 65536
    # Bits-back models (the VAE) lay up to this many consecutive batches of a
    # segment on one ANS stack (format 1.4; 1: each batch its own stack), so
    # that only the batch coded first pays for its latents without bits back
    # (HiLLoC's initial bits).  The encoder keeps one copy of the weights per
    # batch of a chain; the decoder streams.  Flows ignore it.
    chain_batches: int = 16

    def __post_init__(self) -> None:
        for field in fields(self):  # a header is data from outside: check the types too
            value, wanted = getattr(self, field.name), type(field.default)
            allowed = (int, float) if wanted is float else wanted
            if not isinstance(value, allowed) or (wanted is not bool and isinstance(value, bool)):
                raise ValueError(f"adaptation setting {field.name} must be {wanted.__name__}, "
                                 f"not {type(value).__name__}")
        for selection in (self.parameters, self.gray_parameters or self.parameters):
            if selection not in PARAMETER_SELECTIONS:
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
        return asdict(self)

    @classmethod
    def from_header(cls, values: dict) -> "AdaptationConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown adaptation settings {sorted(unknown)}")
        return cls(**{**LEGACY_VALUES, **values})
