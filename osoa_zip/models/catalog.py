"""Which models are installed, and what their manifest says: without loading torch.

The command line shows model names, defaults and learning rates (`--help`,
`models`) and checks an archive's model before it knows whether the archive
needs one; none of that needs a network.  Loading and verifying checkpoints
is registry.py's (which re-exports these names).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

MANIFEST = "manifest.json"
# v7 (engine 2: v6's architecture with exact integer convolutions, trained through
# them) since release 1.8: within 1% of v6's size on every evaluation set, and faster
# (docs/MODELS.md).
DEFAULT_MODEL = "idf-sublattice-v7"
# Level -1's model: v7's colour network, weight for weight, beside a grey network of v7's
# architecture at hidden width 16 and depth 2 (v7: 48 and 3), trained through engine 2 on
# v7's grey tiles: frozen, v7's grey pass costs the most per pixel (docs/MODELS.md).
FAST_MODEL = "idf-fast-v1"


class ModelError(Exception):
    """A model is missing, unknown, or not the one an archive needs."""


def model_dirs() -> list[Path]:
    """Where checkpoints live: $OSOA_ZIP_MODELS, the checkout, the installed data."""
    dirs = []
    if os.environ.get("OSOA_ZIP_MODELS"):
        dirs.append(Path(os.environ["OSOA_ZIP_MODELS"]))
    dirs.append(Path(__file__).resolve().parents[2] / "models")
    dirs.append(Path(sys.prefix) / "share" / "osoa-zip" / "models")
    return [d for d in dirs if (d / MANIFEST).is_file()]


def available_models() -> dict[str, dict]:
    """name -> manifest entry (with the directory it was found in); first found wins."""
    found: dict[str, dict] = {}
    for directory in model_dirs():
        entries = json.loads((directory / MANIFEST).read_text())["models"]
        for name, entry in entries.items():
            found.setdefault(name, {**entry, "directory": str(directory)})
    return found


def recommended_learning_rate(entry: dict, parameters: str | None = None) -> float | None:
    """The adaptation learning rate a manifest entry recommends (``adaptation``), if any.

    The flows adapt well at the engine's default; a VAE wants far smaller steps
    (its loss is a one-sample ELBO and every layer adapts).  The best rate also
    depends on which parameters adapt: on engine 2, every layer of v7 wants 5e-5
    but its last layers alone 3e-4, so an entry may name a rate per selection
    (``adaptation.learning_rates``, e.g. ``{"last": 3e-4}``), which wins over
    ``learning_rate`` when ``parameters`` is that selection.  Archives record the
    rate used, so this only picks a default for the encoder.
    """
    adaptation = entry.get("adaptation", {})
    rate = adaptation.get("learning_rates", {}).get(parameters) if parameters is not None else None
    rate = adaptation.get("learning_rate") if rate is None else rate
    return float(rate) if rate is not None else None


def recommended_parameters(entry: dict) -> str | None:
    """The parameter selection a manifest entry recommends adapting (``adaptation.parameters``), if any."""
    selection = entry.get("adaptation", {}).get("parameters")
    return str(selection) if selection is not None else None
