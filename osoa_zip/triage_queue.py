"""Triage's judgements in the order they were made, θ0's passes measured by the worker meanwhile.

Triage (triage.py) judges images a few dozen at a time while compress reads a folder, and
θ0's passes over their samples are most of its cost: on 2048 small RGB tiles, ~0.6 s of the
command's process before the first batch.  With a second core, the worker process
(adapt/parts.py) measures them instead (``PartWorker.measure``, the same function on the
same model: the same bits), and this process reads on.  Judgements wait here, in order,
until compress needs them carried out (pack.py, ``_Compressor._settle``): before anything
else is written or joins a group, so that the archive is the bytes one process writes.

Measurements go to the worker only once it is ready (until then they wait for it), and are
taken from it in the order asked.  A worker that is not ready when they are needed, or that
stops, leaves them to this process.  What waits holds its images' pixels, so the caller
settles once they reach a group's worth (``waiting_subpixels``).

At most MAX_ASKED passes are asked and not yet read: answers nobody reads would pile up in the
worker, in its output pipe and then in its memory.  Answers that have arrived are read
whenever more are asked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from .layout import PartsError

MAX_ASKED = 16  # passes asked of the worker and not yet read: their answers (~0.6 kB each) fit its pipe


@dataclass
class _Judged:
    pending: list  # (entry, record, cleared) in the order read
    judging: object  # triage.Judging
    asked: bool = False  # the worker measures its samples
    answers: list | None = None  # the worker's answers read so far
    measured: list | None = None  # each pass's tile bits, once in hand


class TriageQueue:
    """Images judged together, oldest first, until their verdicts are taken."""

    def __init__(self, triage) -> None:
        self.triage = triage
        self._queue: list[_Judged] = []
        self._asked = 0  # passes asked of the worker, not yet read

    def __bool__(self) -> bool:
        return bool(self._queue)

    def judge(self, pending: list, worker) -> None:
        """Judge ``pending`` ((entry, record, cleared) as compress read them): measured by
        ``worker`` if there is one (once it is ready), else here."""
        judging = self.triage.begin([(record, entry.source, entry.size) for entry, record, _ in pending],
                                    clear=[cleared for _, _, cleared in pending])
        judged = _Judged(pending, judging)
        self._queue.append(judged)
        if not judging.passes:
            judged.measured = []
        elif worker is None or worker.failed:
            judged.measured = self._here(judged)
        self._ask(worker)

    @property
    def waiting(self) -> bool:
        """Whether anything waits for the worker."""
        return any(judged.measured is None for judged in self._queue)

    @property
    def waiting_subpixels(self) -> int:
        return sum(record.pixels.size for judged in self._queue for _, record, _ in judged.pending)

    def collect(self, worker) -> None:
        """Every measurement in hand (before the worker is given other work): the worker's
        answers, or this thread's where the worker is not ready or has stopped."""
        while any(judged.measured is None for judged in self._queue):
            self._ask(worker)
            judged = next(judged for judged in self._queue if judged.measured is None)
            if not judged.asked or worker.failed:  # the worker is not ready, or has stopped
                judged.measured = self._here(judged)
                continue
            try:
                while judged.measured is None:
                    self._read(worker)
            except PartsError:
                worker.failed = True

    def take(self, worker) -> Iterator[tuple[list, list]]:
        """(pending, their verdicts) of every judgement, oldest first, each removed as it is
        given."""
        self.collect(worker)
        while self._queue:
            judged = self._queue.pop(0)
            yield judged.pending, judged.judging.verdicts(judged.measured)

    def _ask(self, worker) -> None:
        """Read the answers that have arrived, then send the worker the measurements that wait
        for it, in order, while at most MAX_ASKED passes are out (one judgement's passes at
        least), if it is ready."""
        waiting = [judged for judged in self._queue if judged.measured is None and not judged.asked]
        if not waiting or worker is None or worker.failed:
            return
        try:
            if not worker.poll_ready():
                return
            while self._asked and worker.has_answer():
                self._read(worker)
            for judged in waiting:
                passes = len(judged.judging.passes)
                if self._asked and self._asked + passes > MAX_ASKED:
                    return
                for channels, tiles in judged.judging.passes:
                    worker.measure(channels, tiles)
                judged.asked, judged.answers = True, []
                self._asked += passes
        except PartsError:
            worker.failed = True  # it did not start, or stopped: collect measures here

    def _read(self, worker) -> None:
        """Read the worker's next answer, the oldest judgement's that it measures."""
        judged = next(judged for judged in self._queue if judged.asked and judged.measured is None)
        judged.answers.append(worker.measured())
        self._asked -= 1
        if len(judged.answers) == len(judged.judging.passes):
            judged.measured = judged.answers

    def _here(self, judged: _Judged) -> list:
        return [self.triage.measure(channels, tiles) for channels, tiles in judged.judging.passes]
