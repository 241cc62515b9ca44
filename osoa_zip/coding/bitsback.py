"""One ANS stack that pushes *and* pops, for bits-back coding (BB-ANS).

Bits-back (Townsend et al., 2019) codes an image x with a latent z by
*popping* z from the stack under the posterior q(z|x) (this reads bits that
are already there, and the decoder gives them back), then pushing x under
p(x|z) and z under p(z).  The decoder runs the same three steps backwards:
pop z under p(z), pop x under p(x|z), push z under q(z|x).  So, unlike the
flow's ``Encoder`` (a queue replayed backwards at the end), this coder acts
at once.

A *push* takes an ``Encoder`` holding one group of symbols written in the
order the decoder will pop them, and lays it on the stack backwards; pops
come from ``Decoder``.  One stack holds a whole chain of batches (up to
AdaptationConfig.chain_batches, adapt/engine.py ``encode_chain``): the
decoder keeps it open from the chain's first batch to its last.
"""
from __future__ import annotations

import numpy as np

from .ans import CorruptStream, Decoder, Encoder


class StackCoder(Decoder):
    """Pops like ``Decoder``; ``push`` lays an ``Encoder``'s group on top of the stack."""

    def __init__(self, data: bytes = b"") -> None:
        super().__init__(data)
        self._current: np.ndarray | None = self._words

    def _bulk(self) -> np.ndarray:
        """A push lays new words on the stack, so the words are read back after one."""
        if self._current is None:
            self._current = self._coder.get_compressed()
        return self._current

    def push(self, group: Encoder) -> None:
        group.replay_onto(self._coder)
        self._current = None

    def num_bits(self) -> int:
        return int(self._coder.num_bits())

    def finish(self) -> bytes:
        return self._coder.get_compressed().astype("<u4").tobytes()


__all__ = ["StackCoder", "CorruptStream", "Encoder"]
