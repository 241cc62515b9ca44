"""Segments coded as tasks on a Dask cluster (``--dask ADDRESS``): run_segments' contract, past one machine.

A group's batches are cut into runs exactly as segments.run_segments cuts
them (``split_runs``); each run is one task.  A task carries plain values
only: the model's name and SHA-256, the adaptation settings as the header
writes them, the state the run starts from (``OnlineAdapter.export_state``:
numpy arrays and numbers; a run that starts a segment starts from θ0 and
carries none), and the run's tiles (encode) or batch bytes (decode).  The
worker loads the model from its own installation by name and refuses it
unless the SHA-256 matches, so no network, optimiser or torch object is
ever pickled.  Results come back run by run, in order, and the caller keeps
them exactly as it keeps the results of run_segments' threads: the archive
is the one a single machine writes with the same segments.

The first run of a group goes on from the state the previous group left
(a segment may span groups), and the last run's state comes back with its
result, so groups follow one another as they do on one machine.

Worker loss is the scheduler's to handle: a task whose worker dies is run
again elsewhere (``distributed.scheduler.allowed-failures``, 3 by default);
``retries`` reruns a task that raised something unexpected (a worker out of
memory).  Errors a rerun cannot cure (a damaged batch, a missing model) are
returned as values and raised here, once.  Nothing is written before a
group's last run is back, and the callers write archives and restored
folders beside their targets: a run that cannot finish leaves nothing.

``distributed`` is imported only here, and only for ``--dask``.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from collections import deque
from typing import Callable, Sequence

import numpy as np

from . import __version__
from .adapt.config import AdaptationConfig
from .adapt.segments import split_runs
from .layout import ClusterError, UsageError

INSTALL_HINT = "pip install 'osoa-zip[cluster]'"
DEFAULT_TIMEOUT = 10.0  # seconds to reach the scheduler, and to see a worker
# Seconds a run waits while the cluster has no worker at all (a lone worker restarting
# takes a while on a busy machine; Dask itself would wait forever).
NO_WORKER_TIMEOUT = 300.0
RETRIES = 2             # reruns of a task that raised (worker loss is counted by the scheduler)
# Tests only: a folder where tasks can be held (_wait_at_test_gate).
TEST_GATE = "OSOA_ZIP_CLUSTER_TEST_GATE"


class DaskSegments:
    """A connection to a Dask scheduler that codes runs of batches as tasks."""

    def __init__(self, client, address: str, no_worker_timeout: float = NO_WORKER_TIMEOUT) -> None:
        self.client, self.address = client, address
        self.no_worker_timeout = no_worker_timeout

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "DaskSegments":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the two directions ---------------------------------------------------

    def encode(self, adapter, batches: Sequence, tiles_of: Callable, keep: Callable):
        """Code ``batches`` as run_segments(adapter, batches, ..., chain=adapter.chain_length) does.

        ``tiles_of(batch)`` gives a batch's B x C x H x W uint8 tiles (read here, sent
        with the task); ``keep(coded)`` takes a run's [(bytes, BatchStatistics)] in
        order and returns what to keep of them.  Returns (kept results, the adapter to
        go on with).
        """
        from .adapt.engine import BatchStatistics

        def send(run: range) -> dict:
            return {"tiles": [np.ascontiguousarray(tiles_of(batches[i])) for i in run],
                    "chain": adapter.chain_length}

        def receive(run: range, result: list) -> list:
            return keep([(data, BatchStatistics(bits, subpixels, seconds, flags))
                         for data, bits, subpixels, seconds, flags in result])

        return self._run(_encode_run, adapter, len(batches), send, receive)

    def decode(self, adapter, payloads: Sequence[tuple[int, bytes]], shapes: Sequence[tuple],
               paste: Callable[[int, np.ndarray], None]):
        """Decode the batches (index for messages, bytes) of one group, shapes B x C x H x W;
        ``paste(position, tiles)`` is called in order.  Returns the adapter to go on with."""
        def send(run: range) -> dict:
            return {"batches": [(payloads[i][0], payloads[i][1], tuple(int(n) for n in shapes[i])) for i in run]}

        def receive(run: range, result: list) -> None:
            for position, tiles in zip(run, result):
                paste(position, tiles)

        _, adapter = self._run(_decode_run, adapter, len(payloads), send, receive)
        return adapter

    # -- runs as tasks, results in order ---------------------------------------

    def _run(self, task: Callable, adapter, count: int, send: Callable, receive: Callable):
        """Submit the runs (at most ``window`` in flight, so that the tiles sent are bounded)
        and hand their results to ``receive`` in order; the last run's state is the new one."""
        runs = split_runs(adapter.batches_seen, count, adapter.config.segment_batches)
        if not runs:
            return [], adapter
        common = {"version": __version__, "model": adapter.bundle.name, "sha256": adapter.bundle.sha256,
                  "adaptation": adapter.config.to_header()}
        tag = f"osoa-zip-{task.__name__.strip('_').replace('_', '-')}-{uuid.uuid4().hex[:12]}"
        window = max(2, 2 * sum(self.client.nthreads().values()))
        pending: deque = deque()
        results: list = []
        final = None

        def collect() -> None:
            nonlocal final
            run, future = pending.popleft()
            outcome = self._outcome(future)
            results.extend(receive(run, outcome["results"]) or [])
            final = outcome.get("state", final)

        for k, run in enumerate(runs):
            if len(pending) >= window:
                collect()
            # The first run goes on from the caller's state, unless it starts a segment (θ0) as the others do.
            going_on = k == 0 and not adapter.starts_segment()
            start = adapter.export_state() if going_on else {"batches": adapter.batches_seen + run.start, "tracks": {}}
            arguments = {**common, **send(run), "state": start, "return_state": k == len(runs) - 1}
            pending.append((run, self.client.submit(task, arguments, key=f"{tag}-{k}", retries=RETRIES,
                                                    pure=False)))
        while pending:
            collect()
        adapter.import_state(final)
        return results, adapter

    def _outcome(self, future) -> dict:
        from distributed import KilledWorker
        from distributed.utils import CancelledError
        try:
            outcome = self._wait(future)
        except KilledWorker as error:
            raise ClusterError(f"{error.allowed_failures + 1} Dask workers died while coding one segment, the "
                               f"last {error.last_worker.address} (the scheduler's "
                               f"distributed.scheduler.allowed-failures is {error.allowed_failures})") from None
        except (OSError, TimeoutError, CancelledError) as error:
            raise ClusterError(f"lost the Dask scheduler at {self.address}: {error}") from None
        finally:
            future.release()
        if "error" in outcome:
            raise _ERRORS[outcome["kind"]](outcome["error"])
        return outcome

    def _wait(self, future):
        """The future's result; a cluster left without any worker for ``no_worker_timeout``
        seconds is an error (Dask itself would wait for workers forever)."""
        alone_since = None
        while True:
            try:
                return future.result(timeout=min(1.0, self.no_worker_timeout))
            except TimeoutError:
                if self.client.nthreads():
                    alone_since = None
                elif alone_since is None:
                    alone_since = time.monotonic()
                elif time.monotonic() - alone_since >= self.no_worker_timeout:
                    raise ClusterError(f"the Dask cluster at {self.address} has had no worker for "
                                       f"{self.no_worker_timeout:g} s") from None


def connect(address: str, timeout: float = DEFAULT_TIMEOUT) -> DaskSegments:
    """A connection to the scheduler at ``address`` with at least one worker, or a UsageError."""
    try:
        from distributed import Client
        from distributed.comm import get_address_host_port
    except ImportError:
        raise UsageError(f"--dask needs the cluster extra: {INSTALL_HINT}") from None
    try:
        get_address_host_port(address)  # checked first: a Client made from a bad address fails again at exit
    except ValueError as error:
        raise UsageError(f"--dask {address}: not a Dask scheduler address such as tcp://host:8786 ({error})") \
            from None
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as error:
        raise UsageError(f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({error})") from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError) as error:
        client.close()
        raise UsageError(f"the Dask cluster at {address} has no worker (waited {timeout:g} s: {error})") from None
    return DaskSegments(client, address)


# -- on the worker --------------------------------------------------------------

_BUNDLES: dict = {}
_BUNDLES_LOCK = threading.Lock()


def _encode_run(arguments: dict) -> dict:
    """One run of a group: encode its batches in chains from the state it starts from."""
    return _on_worker(arguments, _encode_batches)


def _decode_run(arguments: dict) -> dict:
    """One run of a group: decode its batches from the state it starts from."""
    return _on_worker(arguments, _decode_batches)


def _encode_batches(adapter, arguments: dict) -> list:
    tiles, chain = arguments["tiles"], int(arguments["chain"])
    coded = [result for start in range(0, len(tiles), chain)
             for result in adapter.encode_chain(tiles[start:start + chain])]
    adapter.end_run()
    return [(data, stats.bits, stats.subpixels, stats.seconds, stats.flags) for data, stats in coded]


def _decode_batches(adapter, arguments: dict) -> list:
    from .coding.ans import CorruptStream
    from .container.format import ArchiveError
    decoded = []
    for index, payload, shape in arguments["batches"]:
        try:
            decoded.append(adapter.decode(payload, shape))
        except (CorruptStream, ValueError) as error:
            raise ArchiveError(f"batch {index} does not decode ({error})") from None
    try:
        adapter.end_run()
    except ValueError as error:  # the run's last chain is cut short
        raise ArchiveError(f"batch {index} does not decode ({error})") from None
    return decoded


def _on_worker(arguments: dict, code: Callable) -> dict:
    """Check the versions and the model, build the adapter, code, and return plain values;
    the errors a rerun cannot cure come back as values (not retried)."""
    from .container.format import ArchiveError
    from .models.registry import ModelError
    _wait_at_test_gate()
    try:
        if arguments["version"] != __version__:
            raise ModelError(f"it runs osoa-zip {__version__}, this client {arguments['version']}: "
                             f"install the same version everywhere")
        adapter = _adapter(arguments["model"], arguments["sha256"], arguments["adaptation"])
        adapter.import_state(arguments["state"])
        outcome = {"results": code(adapter, arguments)}
        if arguments["return_state"]:
            outcome["state"] = adapter.export_state()
        return outcome
    except ModelError as error:
        return {"error": f"Dask worker {_worker_name()}: {error}", "kind": "model"}
    except ArchiveError as error:
        return {"error": str(error), "kind": "archive"}


def _adapter(name: str, sha256: str, header: dict):
    """An adapter of the worker's own copy of the model, verified by its SHA-256 (loaded once)."""
    from .adapt.engine import OnlineAdapter
    from .exact.stack import set_gemm_threads
    from .models.registry import load_model
    with _BUNDLES_LOCK:
        if (name, sha256) not in _BUNDLES:
            set_gemm_threads(1)  # the worker's threads run tasks side by side
            _BUNDLES[name, sha256] = load_model(name, sha256)
        bundle = _BUNDLES[name, sha256]
    return OnlineAdapter(bundle, AdaptationConfig.from_header(header))


def _worker_name() -> str:
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return f"(process {os.getpid()})"


def _wait_at_test_gate() -> None:
    """Tests only (TEST_GATE): while DIR/hold exists, a task announces itself as
    DIR/started.PID.N and waits, so that a test can kill its worker mid-task."""
    gate = os.environ.get(TEST_GATE)
    if not gate or not os.path.exists(os.path.join(gate, "hold")):
        return
    with open(os.path.join(gate, f"started.{os.getpid()}.{uuid.uuid4().hex}"), "w"):
        pass
    while os.path.exists(os.path.join(gate, "hold")):
        time.sleep(0.05)


def _archive_error(message: str):
    from .container.format import ArchiveError
    return ArchiveError(message)


def _model_error(message: str):
    from .models.registry import ModelError
    return ModelError(message)


_ERRORS = {"archive": _archive_error, "model": _model_error}
