"""A thin, order-preserving front end to constriction's ANS coder.

ANS is a stack: the last symbol pushed is the first one popped.  Models are
written in the order the *decoder* meets the symbols (it needs earlier ones to
predict later ones), so the encoder queues every push and replays the queue
backwards when the batch is finished.  Each batch gets its own coder, so the
queue (and memory) is bounded by one batch.

Only integer-valued probability tables and integer uniform models reach the
coder: constriction's parametric models call the platform's libm.

A symbol of a categorical row costs the coder only its interval in
constriction's 24-bit quantization of the row, so ``push_intervals`` takes
each symbol's cumulative counts (before it, through it) and the row's total
and length, and codes the same interval with a three-bin row whose
quantization is exact: the same bytes as ``push_categorical`` on the whole
row, without building the row.  ``quantized_intervals`` is that
quantization, replayed in integer-exact float64 (tests/test_coder_speed_paths.py
checks it against constriction).
"""
from __future__ import annotations

import constriction
import numpy as np

from . import native

_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)
PRECISION = 24  # constriction's default ANS coder: 32-bit words, 24-bit probabilities
_ONE = 1 << PRECISION


def quantized_intervals(before: np.ndarray, through: np.ndarray, total: np.ndarray, size: np.ndarray,
                        symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of each symbol's interval out of 2**24, as Categorical(perfect=False) codes it.

    Row i has ``size[i]`` integer counts summing to ``total[i]``; ``before[i]`` and
    ``through[i]`` are its counts summed up to and through symbol ``symbols[i]``.
    constriction (a lazy categorical model, 0.4 and 0.5) gives symbol s the interval
    [floor(before * scale) + s, floor(through * scale) + s + 1) with scale =
    (2**24 - size) / total, and the last symbol an end of 2**24.  Every count and sum
    is an integer below 2**53, so the float64 sums are exact on any machine and the
    product is one correctly rounded IEEE operation, as in constriction.
    """
    scale = (_ONE - size).astype(np.float64) / total.astype(np.float64)
    start = (before.astype(np.float64) * scale).astype(np.int64) + symbols
    end = np.where(symbols == size - 1, _ONE, (through.astype(np.float64) * scale).astype(np.int64) + symbols + 1)
    return start, end


def three_bin_rows(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(symbols, rows): three-bin rows of total 2**24 - 3 under which each symbol's quantized
    interval is exactly [start, end) (scale 1, so the quantization adds only the symbol's index).

    The middle bin carries the interval; one that starts at 0 is the first bin, one that
    ends at 2**24 the last (the lazy model's last symbol always ends there; it must then
    start at 2 or later).
    """
    width = end - start
    symbols = np.where(start == 0, 0, np.where(end == _ONE, 2, 1))
    first = np.where(symbols == 0, width - 1, np.where(symbols == 1, start - 1, start - 2))
    middle = np.where(symbols == 1, width - 1, 0)
    rows = np.empty((len(start), 3), dtype=np.float64)
    rows[:, 0], rows[:, 1] = first, middle
    rows[:, 2] = (_ONE - 3) - first - middle
    return symbols.astype(np.int32), rows


class CorruptStream(ValueError):
    """The coded data do not decode to exactly the symbols that were written."""


class Encoder:
    def __init__(self) -> None:
        self._queue: list[tuple] = []

    def push_categorical(self, symbols: np.ndarray, counts: np.ndarray) -> None:
        """symbols[i] in range(counts.shape[1]); counts: integer-valued float64 rows."""
        if len(symbols):
            self._queue.append((np.ascontiguousarray(symbols, dtype=np.int32), _CATEGORICAL,
                                np.ascontiguousarray(counts, dtype=np.float64)))

    def push_intervals(self, symbols: np.ndarray, before: np.ndarray, through: np.ndarray,
                       total: np.ndarray, size: np.ndarray) -> None:
        """Code each symbol as ``push_categorical`` would under its row, from the row's cumulative
        counts alone (``quantized_intervals``): the same bytes, O(1) per symbol."""
        if len(symbols):
            if not (total > 0).all():  # as constriction refuses such a row
                raise ValueError("a probability row sums to zero")
            self.push_quantized(*quantized_intervals(before, through, total, size, symbols))

    def push_quantized(self, start: np.ndarray, end: np.ndarray) -> None:
        """Code each symbol by its quantized interval [start, end) out of 2**24 (as
        ``quantized_intervals`` gives it): the bytes ``push_intervals`` writes."""
        if len(start):
            # Three bins cannot give [1, 2**24) (a two-symbol row's last symbol after a first
            # of width 1): such symbols go as two-bin rows, in order with the others.
            two_bins = (start == 1) & (end == _ONE)
            cuts = np.nonzero(np.diff(two_bins))[0] + 1
            for first, last in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(start)]])):
                if two_bins[first]:
                    rows = np.tile([0.0, _ONE - 2.0], (last - first, 1))
                    self._queue.append((np.ones(last - first, dtype=np.int32), _CATEGORICAL, rows))
                else:
                    three, rows = (native.three_bin_rows if native.available() else three_bin_rows)(
                        start[first:last], end[first:last])
                    self._queue.append((three, _CATEGORICAL, rows))

    def push_uniform(self, symbols: np.ndarray, size: int) -> None:
        if len(symbols):
            self._queue.append((np.ascontiguousarray(symbols, dtype=np.int32),
                                constriction.stream.model.Uniform(size)))

    def replay_onto(self, coder) -> None:
        """Push the queue onto an AnsCoder (backwards, so it pops in queue order); empty it."""
        for item in reversed(self._queue):
            coder.encode_reverse(*item)
        self._queue.clear()

    def finish(self) -> bytes:
        coder = constriction.stream.stack.AnsCoder()
        self.replay_onto(coder)
        return coder.get_compressed().astype("<u4").tobytes()


class Decoder:
    def __init__(self, data: bytes) -> None:
        if len(data) % 4:
            raise CorruptStream("coded length is not a whole number of 32-bit words")
        self._words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        self._coder = constriction.stream.stack.AnsCoder(self._words.copy())

    def _bulk(self) -> np.ndarray:
        """The coder's words: its stack holds the first ``pos()[0]`` of them (decoding only
        takes words from the top, so they are the words it was given)."""
        return self._words

    def position(self) -> tuple[int, int]:
        """Where decoding stands: (words still on the stack, the coder's state)."""
        position, state = self._coder.pos()
        return int(position), int(state)

    def resume(self, position: tuple[int, int]) -> None:
        """Go on from ``position``, which a decoder of the same data reached (possibly in another
        process): what it has popped is not popped again."""
        self._coder.seek(*position)

    def run(self, loop, *arguments) -> int:
        """Run a compiled decoding loop (``native``) on the coder: it takes the words and
        (position, state) of ``AnsCoder.pos`` and returns the new position and state, or a
        negative position (returned here) when what it decoded cannot be right."""
        position, state = self._coder.pos()
        position, state = loop(self._bulk(), position, np.uint64(state), *arguments)
        if position >= 0:
            self._coder.seek(int(position), int(state))
        return int(position)

    def pop_categorical(self, counts: np.ndarray) -> np.ndarray:
        if not len(counts):
            return np.zeros(0, dtype=np.int32)
        return self._coder.decode(_CATEGORICAL, np.ascontiguousarray(counts, dtype=np.float64))

    def pop_uniform(self, count: int, size: int) -> np.ndarray:
        if not count:
            return np.zeros(0, dtype=np.int32)
        return self._coder.decode(constriction.stream.model.Uniform(size), count)

    def check_finished(self) -> None:
        if not self._coder.is_empty():
            raise CorruptStream("coded data left over after the last symbol")
