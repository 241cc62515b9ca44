"""A checkpoint's networks are built when first asked for, once, and are the weights the file holds."""
from __future__ import annotations

import threading
from pathlib import Path

import torch
from safetensors.torch import load_file

from osoa_zip.models.catalog import available_models
from osoa_zip.models.registry import CHANNEL_PREFIXES, load_model

MODEL = "idf-tiny-test-e2"


def test_a_network_is_built_only_when_asked_for_and_then_kept():
    bundle = load_model(MODEL)
    built = bundle.networks._built
    assert built == {}
    grey = bundle.network(1)
    assert list(built) == [1]
    assert bundle.network(1) is grey
    assert sorted(bundle.networks) == sorted(CHANNEL_PREFIXES)
    assert bundle.network(3) is not grey and sorted(built) == [1, 3]


def test_each_network_holds_the_checkpoints_weights_in_float64():
    bundle = load_model(MODEL)
    entry = available_models()[MODEL]
    tensors = load_file(str(Path(entry["directory"]) / entry["file"]))
    for channels, prefix in CHANNEL_PREFIXES.items():
        state = bundle.network(channels).state_dict()
        for key, value in tensors.items():
            if key.startswith(prefix + "."):
                loaded = state[key[len(prefix) + 1:]]
                if loaded.is_floating_point():
                    assert loaded.dtype == torch.float64
                assert torch.equal(loaded.to(value.dtype), value), key
        assert bundle.network(channels).tables is not None


def test_threads_asking_at_once_get_one_network():
    bundle = load_model(MODEL)
    seen, start = [], threading.Barrier(4)

    def ask():
        start.wait()
        seen.append(bundle.network(3))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 4 and all(network is seen[0] for network in seen)
