"""Run every codec on the same images of each folder, one after another, and collect rows.

osoa-zip (adapted and --no-adapt) and the classical codecs each run as a
separate process per direction (processes.py: wall time, peak RSS); the
fine-tune + store baseline runs in this process on the exact engine
(finetune.py).  Every decompression is checked against the originals: a
codec that does not give the pixels back fails the benchmark.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from .. import __version__
from ..adapt.config import AdaptationConfig
from ..adapt.defaults import adaptation_for
from . import BenchError, classical
from .processes import Measured, osoa_zip_command, run_measured
from .report import write_outputs
from .results import (
    FINE_TUNE,
    FINE_TUNE_F32,
    FROZEN,
    OSOA,
    STORED_AS_FILES,
    BenchOptions,
    BenchResult,
    Row,
    ScalingRow,
    SetResult,
)
from .sets import BenchSet, model_batches, prepare_set, tile_folder


def machine_description() -> dict:
    """CPU model and cores (lscpu), OS, versions, thread settings: what the numbers depend on."""
    cpu, cores = platform.processor() or platform.machine(), str(os.cpu_count())
    if shutil.which("lscpu"):
        listing = subprocess.run(["lscpu"], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"}).stdout
        fields = dict(line.split(":", 1) for line in listing.splitlines() if ":" in line)
        cpu = fields.get("Model name", cpu).strip()
        cores = fields.get("CPU(s)", cores).strip()
    import torch  # already loaded by the engine; only its version is wanted here
    return {"cpu": cpu, "cores": cores, "system": f"{platform.system()} {platform.machine()}",
            "python": platform.python_version(), "torch": torch.__version__, "osoa_zip": __version__,
            "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
            "date": datetime.date.today().isoformat(), "load": _load_average()}


def _load_average() -> str:
    """The 1-minute load average: on a shared machine, the context every timing needs."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def _compress_arguments(model: str, config: AdaptationConfig, adapt: bool) -> list[str]:
    config = adaptation_for(model, config)
    arguments = ["--model", model, "--learning-rate", repr(config.learning_rate),
                 "--steps-per-batch", str(config.steps_per_batch), "--batch-size", str(config.batch_size),
                 "--batch-pixels", str(config.batch_pixels), "--give-up-after", str(config.give_up_after),
                 "--adapt-params", config.parameters, "--gray-adapt-params", config.parameters_for(1),
                 "--tile-size", str(config.tile_size), "--batch-pixels-max", str(config.batch_pixels_max),
                 "--gray-batch-pixels", str(config.gray_batch_pixels),
                 "--every-image"]  # the bench measures the model on every image, not triage's choice
    return arguments + ([] if adapt else ["--no-adapt"])


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class _SetRunner:
    def __init__(self, options: BenchOptions, bench_set: BenchSet, work: Path, log: Callable[[str], None]) -> None:
        self.options, self.set, self.work, self.log = options, bench_set, work, log
        self.rows: list[Row] = []
        self.curves: dict[str, list[float]] = {}
        config = options.config
        # The batches osoa-zip codes when every image takes the model path.
        self.batches = model_batches(bench_set.folder, config.tile_size, config.batch_size_for)
        self.statistics: dict[str, list[tuple[int, int]]] = {}  # per-batch (bits, sub-pixels) of each archive

    def _all_coded(self, key: str) -> bool:
        """Whether that archive coded every batch (the archiver stores a group as files instead
        when the model would code it larger than its files)."""
        return [subpixels for _, subpixels in self.statistics[key]] == [batch.size for batch in self.batches]

    def _row(self, codec: str, label: str, **values) -> Row:
        row = Row(self.set.name, codec, label, self.set.subpixels, **values)
        self.rows.append(row)
        return row

    def osoa_zip(self, adapt: bool) -> None:
        """Compress and decompress with the real command line."""
        from ..table import batch_statistics
        from ..verify import tree_differences
        key = OSOA if adapt else FROZEN
        archive, restored = self.work / f"{key}.osoa", self.work / f"{key}-restored"
        self.log(f"{self.set.name}: osoa-zip {'' if adapt else '--no-adapt '}compress")
        packed = run_measured(osoa_zip_command("compress", "-q", *_compress_arguments(
            self.options.model, self.options.config, adapt), str(self.set.folder), str(archive)))
        self.log(f"{self.set.name}: osoa-zip decompress")
        unpacked = run_measured(osoa_zip_command("decompress", "-q", str(archive), str(restored)))
        problems = tree_differences(self.set.folder, restored)
        if problems:
            raise BenchError(f"{self.set.name}: osoa-zip did not restore the images: {problems[:3]}")
        shutil.rmtree(restored)
        label = "osoa-zip (OSOA, default)" if adapt else "osoa-zip --no-adapt (pretrained only)"
        with open(archive, "rb") as handle:
            self.statistics[key] = batch_statistics(handle)
        coded = sum(subpixels for _, subpixels in self.statistics[key])
        expected = sum(batch.size for batch in self.batches)
        note = "" if self._all_coded(key) else (
            f"{STORED_AS_FILES}: the model coded {coded} of {expected} tile sub-pixels, the archiver stored "
            f"the rest as files because the model coded them larger than the files")
        self._row(key, label, bytes=archive.stat().st_size, note=note, **_times(packed, unpacked))
        self.curves[label] = [bits / subpixels for bits, subpixels in self.statistics[key]]

    def fine_tune(self) -> str:
        """The paper's baseline, counted as a whole archive: an archive's container and tables
        (the --no-adapt one's, or OSOA's if that one stored files), plus the stored weights,
        plus the data coded with them."""
        from ..models.registry import load_model
        from .finetune import fine_tune_and_store
        config, batches = self.options.config, self.batches
        whole = next((key for key in (FROZEN, OSOA) if self._all_coded(key)), None)
        if whole is None:
            self._row(FINE_TUNE, "fine-tune + store",
                      note="skipped: not comparable, both osoa-zip archives stored images as files")
            return ""
        self.log(f"{self.set.name}: fine-tune + store ({len(batches)} batches)")
        result = fine_tune_and_store(load_model(self.options.model), config, batches)
        if not result.decoded_exactly:
            raise BenchError(f"{self.set.name}: fine-tune + store did not decode back to the images")
        archive = next(row for row in self.rows if row.codec == whole)
        container = archive.bytes - sum(bits for bits, _ in self.statistics[whole]) // 8
        for key, dtype in ((FINE_TUNE, "float16"), (FINE_TUNE_F32, "float32")):
            store = result.stores[dtype]
            self._row(key, f"fine-tune + store ({dtype}, xz)", bytes=container + store.total_bytes,
                      compress_seconds=result.tune_seconds + store.code_seconds,
                      decompress_seconds=result.decode_seconds if dtype == "float16" else None,
                      measured_as="in-process",
                      note=f"weights {store.weight_bytes} B + data {store.data_bytes} B + container {container} B")
        store = result.stores["float16"]
        self.curves["fine-tune + store (data only, float16)"] = [
            bits / subpixels for bits, subpixels in zip(store.batch_bits, result.batch_subpixels)]
        return (f"fine-tune + store: {result.stored_values} parameters tuned ({len(batches)} batches, "
                f"{config.steps_per_batch} optimiser step(s) each, lr {config.learning_rate:g}); weights "
                f"{store.weight_bytes} B as float16+xz, {result.stores['float32'].weight_bytes} B as float32+xz. "
                + (_break_even(sum(bits for bits, _ in self.statistics[OSOA]), 8 * store.data_bytes,
                               8 * store.weight_bytes, sum(result.batch_subpixels)) if self._all_coded(OSOA) else ""))

    def classical(self, key: str) -> None:
        codec = classical.CODECS[key]
        method = classical.FAST_WEBP_METHOD if self.options.fast_baselines else classical.WEBP_METHOD
        label = codec.label.format(method=method)
        missing = codec.missing()
        if missing:
            self._row(key, label, note=f"skipped: {missing}")
            return
        encoded = self.work / (f"{key}.tar.xz" if key == "tar-xz" else key)
        decoded = self.work / f"{key}-decoded"
        decoded.mkdir()
        self.log(f"{self.set.name}: {label}")
        packed = run_measured(classical.child_command("encode", key, self.set.folder, encoded, method))
        unpacked = run_measured(classical.child_command("decode", key, encoded, decoded, method))
        problems = classical.decoded_differences(self.set.folder, decoded, key)
        if problems:
            raise BenchError(f"{self.set.name}: {label} is not lossless on {problems[:3]}")
        size = encoded.stat().st_size if encoded.is_file() else _folder_bytes(encoded)
        self._row(key, label, bytes=size, **_times(packed, unpacked),
                  note="per-image files, no container" if key != "tar-xz" else "")
        shutil.rmtree(decoded)


def _break_even(osoa_bits: int, tuned_bits: int, weight_bits: int, subpixels: int) -> str:
    """How much data the stored weights would need to pay for themselves, at this set's rate."""
    line = (f"Data alone (no container, no weights): OSOA {osoa_bits / subpixels:.3f} bpsp, the fine-tuned "
            f"model {tuned_bits / subpixels:.3f} bpsp")
    saving = (osoa_bits - tuned_bits) / subpixels
    if saving <= 0:
        return line + "; storing its weights can never pay."
    return (line + f"; at this rate its float16 weights pay for themselves after about "
            f"{weight_bits / saving:.3g} sub-pixels ({weight_bits / saving / subpixels:.0f} times this set).")


def _times(packed: Measured, unpacked: Measured) -> dict:
    return {"compress_seconds": packed.seconds, "decompress_seconds": unpacked.seconds,
            "compress_rss_mb": packed.peak_rss_mb, "decompress_rss_mb": unpacked.peak_rss_mb}


def run_set(options: BenchOptions, folder: Path, log: Callable[[str], None]) -> SetResult:
    with tempfile.TemporaryDirectory(prefix="osoa-bench-") as work:
        work = Path(work)
        bench_set = prepare_set(folder, options.limit, work / "images")
        runner = _SetRunner(options, bench_set, work, log)
        runner.osoa_zip(adapt=True)
        runner.osoa_zip(adapt=False)
        note = runner.fine_tune()
        for key in classical.CODECS:
            runner.classical(key)
    return SetResult(bench_set, runner.rows, runner.curves, note)


def run_scaling(options: BenchOptions, log: Callable[[str], None]) -> list[ScalingRow]:
    """osoa-zip compress on 100, 1000, ... tiles of the first folder: time should grow
    linearly, peak memory should stay flat."""
    rows = []
    for count in options.scaling:
        with tempfile.TemporaryDirectory(prefix="osoa-bench-scaling-") as work:
            folder = Path(work) / "tiles"
            subpixels, distinct = tile_folder(options.folders[0], count, options.config.tile_size, folder)
            archive = Path(work) / "tiles.osoa"
            log(f"scaling: {count} tiles")
            measured = run_measured(osoa_zip_command("compress", "-q", *_compress_arguments(
                options.model, options.config, True), str(folder), str(archive)))
            rows.append(ScalingRow(count, distinct, subpixels, archive.stat().st_size,
                                   measured.seconds, measured.peak_rss_mb))
    return rows


def run_bench(options: BenchOptions, log: Callable[[str], None] = lambda message: None) -> BenchResult:
    """Measure every codec on every folder, write the table, CSV and plots into options.output.
    Settings that ``options.config`` leaves unset are the model's, as for compress."""
    from ..adapt.defaults import adaptation_for  # loads torch: not at import (see __init__.py)
    options = dataclasses.replace(options, config=adaptation_for(options.model, options.config))
    options.output.mkdir(parents=True, exist_ok=True)
    machine = machine_description()
    result = BenchResult(options, machine, run_measured(osoa_zip_command("--version")).seconds, [], [])
    for folder in options.folders:
        result.sets.append(run_set(options, Path(folder), log))
        write_outputs(result, final=False)  # a long run shows its results as it goes
    if options.scaling:
        result.scaling = run_scaling(options, log)
    machine["load"] += f" at the start, {_load_average()} at the end"
    write_outputs(result)
    return result
