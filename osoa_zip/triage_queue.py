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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from .layout import PartsError


@dataclass
class _Judged:
    pending: list  # (entry, record, cleared) in the order read
    judging: object  # triage.Judging
    asked: bool = False  # the worker measures its samples
    measured: list | None = None  # each pass's tile bits, once in hand


class TriageQueue:
    """Images judged together, oldest first, until their verdicts are taken."""

    def __init__(self, triage) -> None:
        self.triage = triage
        self._queue: list[_Judged] = []

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
        self._ask(worker)
        for judged in self._queue:
            if judged.measured is not None:
                continue
            if judged.asked and not worker.failed:
                try:
                    judged.measured = [worker.measured() for _ in judged.judging.passes]
                    continue
                except PartsError:
                    worker.failed = True
            judged.measured = self._here(judged)

    def take(self, worker) -> Iterator[tuple[list, list]]:
        """(pending, their verdicts) of every judgement, oldest first, each removed as it is
        given."""
        self.collect(worker)
        while self._queue:
            judged = self._queue.pop(0)
            yield judged.pending, judged.judging.verdicts(judged.measured)

    def _ask(self, worker) -> None:
        """Send the worker every measurement that waits for it, in order, if it is ready."""
        waiting = [judged for judged in self._queue if judged.measured is None and not judged.asked]
        if not waiting or worker is None or worker.failed:
            return
        try:
            if not worker.poll_ready():
                return
            for judged in waiting:
                for channels, tiles in judged.judging.passes:
                    worker.measure(channels, tiles)
                judged.asked = True
        except PartsError:
            worker.failed = True  # it did not start, or stopped: collect measures here

    def _here(self, judged: _Judged) -> list:
        return [self.triage.measure(channels, tiles) for channels, tiles in judged.judging.passes]
