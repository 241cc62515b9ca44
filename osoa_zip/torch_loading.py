"""torch is imported when a model is loaded, not before: the one door to it for pack and unpack.

Importing torch is most of the command line's start-up (~0.9 s of ~1.45 s), and
`--help`, `list`, `info`, and `test`/`decompress` of an archive without
model-coded images (text files, palette images) need no network.  So the
modules those commands import never import torch; pack.py and unpack.py get
the model and the adapter from here, the first time an image group needs them.

Around that import:
  - the command line's torch thread settings (``prepare(settings)``) run once torch is in;
  - an interrupt while torch loads comes out as KeyboardInterrupt, whatever torch's C
    extension imports turn it into (seen: ``TypeError: expected a message argument``
    from torch._C._distributed_c10d), so that the caller's clean-up runs (no partial
    output) and the command line reports "interrupted", not an internal error.
"""
from __future__ import annotations

import gc
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable

_settings: Callable | None = None  # the command line's thread settings, given torch
_ready = False  # the settings have run
_settled = False  # the collector has been told to leave what the first model load left alive


def prepare(settings: Callable) -> None:
    """Run ``settings(torch)`` once torch is imported (now, if it already is)."""
    global _settings, _ready
    _settings, _ready = settings, False
    if "torch" in sys.modules:
        _loaded()


def load_model(name: str, expected_sha256: str | None = None):
    """models.registry.load_model, importing torch first if it is not in yet."""
    with _importing(), _collector_paused():
        from .models import registry
    _loaded()
    bundle = registry.load_model(name, expected_sha256)
    settle_collector()
    return bundle


@contextmanager
def _collector_paused():
    """Within: no cyclic garbage collection.  Importing torch creates ~250,000 objects that the
    process keeps, and the collector's full passes over them ran twice during the import (~0.1 s)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def settle_collector() -> None:
    """Exempt every object alive now (torch's modules, the model) from later collections, once
    a process.

    They live as long as the process, and each full collection walked all of them again: 4-5
    such passes of 60-70 ms in a compress or decompress of a few thousand small images
    (docs/PERFORMANCE.md).  An exempted object is still freed when its last reference goes;
    only garbage cycles among them would stay, and at the first model load those are the few
    that importing left."""
    global _settled
    if not _settled:
        _settled = True
        gc.freeze()


def online_adapter(bundle, config):
    """An adapt.engine.OnlineAdapter for a loaded model."""
    with _importing():
        from .adapt.engine import OnlineAdapter
    _loaded()
    return OnlineAdapter(bundle, config)


def _loaded() -> None:
    global _ready
    if _settings is not None and not _ready:
        _ready = True
        import torch
        _settings(torch)


@contextmanager
def _importing():
    """Within: an interrupt ends the import as KeyboardInterrupt (handlers: main thread only)."""
    previous = signal.getsignal(signal.SIGINT)
    if ("torch" in sys.modules or threading.current_thread() is not threading.main_thread()
            or previous in (signal.SIG_IGN, None)):  # a job started with SIGINT ignored keeps ignoring it
        yield
        return
    interrupted = []

    def interrupt(signum, frame) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    except BaseException:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
