"""A thin, order-preserving front end to constriction's ANS coder.

ANS is a stack: the last symbol pushed is the first one popped.  Models are
written in the order the *decoder* meets the symbols (it needs earlier ones to
predict later ones), so the encoder queues every push and replays the queue
backwards when the batch is finished.  Each batch gets its own coder, so the
queue (and memory) is bounded by one batch.

Only integer-valued probability tables and integer uniform models reach the
coder: constriction's parametric models call the platform's libm.
"""
from __future__ import annotations

import constriction
import numpy as np

_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)


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
        self._coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))

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
