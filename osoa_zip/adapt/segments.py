"""Segments coded side by side: identical bytes for any number of threads.

A segment (AdaptationConfig.segment_batches) restarts the model from θ0, so
the batches of different segments do not depend on each other.  Given the
batches of one image group, split them where segments start, give every run
after the first a fresh adapter positioned at its global batch index, and
code (or decode) the runs in a thread pool.  The first run continues the
caller's adapter; the last run's adapter carries on into the next group.
torch releases the GIL inside its kernels, so threads overlap the heavy part.
Chains of batches on one bits-back stack (the VAE) start at every run's start.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Sequence, TypeVar

if TYPE_CHECKING:  # imported by the command line, which must not load torch for it
    from .engine import OnlineAdapter

Item = TypeVar("Item")
Result = TypeVar("Result")


class RunEndError(ValueError):
    """A run ended with its adapter unfinished (OnlineAdapter.end_run: a chain cut short)."""

    def __init__(self, last_item, error: Exception) -> None:
        super().__init__(str(error))
        self.last_item = last_item  # the run's last item, to name the batch in the message


def split_runs(first_index: int, count: int, segment_batches: int) -> list[range]:
    """Consecutive runs of item positions, cut before every batch that starts a segment."""
    if count == 0:
        return []
    if not segment_batches:
        return [range(count)]
    cuts = [i for i in range(1, count) if (first_index + i) % segment_batches == 0]
    edges = [0] + cuts + [count]
    return [range(a, b) for a, b in zip(edges, edges[1:])]


def run_segments(adapter: OnlineAdapter, items: Sequence[Item],
                 work: Callable[[OnlineAdapter, Item], Result], threads: int = 1, chain: int = 0
                 ) -> tuple[list[Result], OnlineAdapter]:
    """``work(adapter, item)`` for every item, in order; returns the results and the adapter to go on with.

    With ``chain`` > 0, ``work(adapter, items)`` takes a list of up to ``chain``
    consecutive items of one run (a chain starts at every run's start) and
    returns a list of their results.  Every run ends with ``adapter.end_run()`` (RunEndError).
    """
    runs = split_runs(adapter.batches_seen, len(items), adapter.config.segment_batches)
    if not runs:
        return [], adapter
    adapters = [adapter] + [adapter.fresh_segment(adapter.batches_seen + run.start) for run in runs[1:]]

    def code_run(k: int) -> list[Result]:
        run = runs[k]
        if chain:
            results = [result for start in range(0, len(run), chain)
                       for result in work(adapters[k], [items[i] for i in run[start:start + chain]])]
        else:
            results = [work(adapters[k], items[i]) for i in run]
        try:
            adapters[k].end_run()
        except ValueError as error:
            raise RunEndError(items[run[-1]], error) from None
        return results

    if threads > 1 and len(runs) > 1:
        with _one_gemm_thread_each(), ThreadPoolExecutor(max_workers=threads) as pool:
            parts = list(pool.map(code_run, range(len(runs))))
    else:
        parts = [code_run(k) for k in range(len(runs))]
    return [result for part in parts for result in part], adapters[-1]


@contextmanager
def _one_gemm_thread_each():
    """Within: wide products on one thread.  Segments side by side already keep the cores
    busy, and torch's thread count is one setting for the whole process, which threads
    raising and restoring it around their products would fight over (exact/stack.py)."""
    from ..exact import stack  # torch is in: the adapters hold networks
    previous = stack.gemm_threads()
    stack.set_gemm_threads(1)
    try:
        yield
    finally:
        stack.set_gemm_threads(previous)
