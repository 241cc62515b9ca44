"""What a benchmark run produces: rows per codec and set, scaling rows, the options it ran
with.  Plain data shared by runner.py (which fills it) and report.py (which writes it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..adapt.config import AdaptationConfig
from .sets import BenchSet

OSOA, FROZEN, FINE_TUNE, FINE_TUNE_F32 = "osoa", "no-adapt", "finetune-f16", "finetune-f32"
STORED_AS_FILES = "stored as files"  # starts the note of an osoa-zip row whose archive did not code every image


@dataclass
class Row:
    set_name: str
    codec: str                         # key: osoa, no-adapt, finetune-f16, png, ...
    label: str
    subpixels: int
    bytes: int | None = None           # None: skipped
    compress_seconds: float | None = None
    decompress_seconds: float | None = None
    compress_rss_mb: float | None = None
    decompress_rss_mb: float | None = None
    measured_as: str = "process"       # "process" (wall time, peak RSS of the child) or "in-process"
    note: str = ""

    @property
    def skipped(self) -> bool:
        return self.bytes is None

    @property
    def bpsp(self) -> float | None:
        return None if self.bytes is None else 8 * self.bytes / self.subpixels

    def megabytes_per_second(self, seconds: float | None) -> float | None:
        return self.subpixels / 1e6 / seconds if seconds else None


@dataclass
class SetResult:
    bench_set: BenchSet
    rows: list[Row]
    curves: dict[str, list[float]]     # per-batch bpsp along the archive, by label
    fine_tune_note: str = ""


@dataclass
class ScalingRow:
    tiles: int
    distinct: int      # different tiles among them (the first folder may have fewer)
    subpixels: int
    bytes: int
    seconds: float
    peak_rss_mb: float


@dataclass
class BenchOptions:
    folders: list[Path]
    output: Path
    model: str
    config: AdaptationConfig = AdaptationConfig()
    limit: int | None = None
    fast_baselines: bool = False
    scaling: list[int] = field(default_factory=list)
    plots: bool = True
    command: str = ""


@dataclass
class BenchResult:
    options: BenchOptions
    machine: dict
    startup_seconds: float
    sets: list[SetResult]
    scaling: list[ScalingRow]
    outputs: list[Path] = field(default_factory=list)
    plot_note: str = ""
