"""`osoa-zip bench`: the command end to end on a tiny folder, and the numbers behind it.

The tiny test model and 16x16 tiles keep this to seconds of model work; most
of the time is the start-up of the osoa-zip processes the bench measures.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import lzma
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import EXAMPLES, MODEL, REPO, SINGLE_THREAD_ENV
from PIL import Image

from osoa_zip.adapt.config import DEFAULT_LEARNING_RATE
from osoa_zip.adapt.engine import AdaptationConfig, OnlineAdapter
from osoa_zip.archive import compress
from osoa_zip.bench import classical, finetune, report, runner
from osoa_zip.bench.processes import Measured, run_measured
from osoa_zip.bench.results import BenchResult, ScalingRow
from osoa_zip.bench.sets import model_batches, tile_folder
from osoa_zip.cli import main
from osoa_zip.exact.fixed import WEIGHT_FRAC_BITS, quantize_weight
from osoa_zip.models.registry import FlowBundle, available_models, load_model
from osoa_zip.table import batch_statistics, read_archive

TILE, BATCH = 16, 4
CONFIG = AdaptationConfig(tile_size=TILE, batch_size=BATCH, batch_pixels=0)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """Six RGB and three grey 16x16 crops, stored uncompressed (so the tiny model beats the files)."""
    folder = tmp_path_factory.mktemp("bench") / "tiny"
    folder.mkdir()
    rgb, grey = Image.open(EXAMPLES / "0002.png"), Image.open(EXAMPLES / "0006.png")
    for index in range(6):
        rgb.crop((16 * index, 5, 16 * index + 16, 21)).save(folder / f"rgb{index}.png", compress_level=0)
    for index in range(3):
        grey.crop((3, 16 * index, 19, 16 * index + 16)).save(folder / f"grey{index}.png", compress_level=0)
    return folder


def test_bench_command_writes_table_and_csv_and_reports_missing_codec(tiny_folder, tmp_path, monkeypatch):
    for name, value in SINGLE_THREAD_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(classical, "jxl_backend", lambda: None)  # as if neither JPEG XL package were installed
    out = tmp_path / "results"
    result = CliRunner().invoke(main, ["bench", str(tiny_folder), "--model", MODEL, "--tile-size", str(TILE),
                                       "--batch-size", str(BATCH), "--fast-baselines",
                                       "--no-plots", "-o", str(out)])
    assert result.exit_code == 0, result.output
    table = result.stdout
    assert "| tiny | 9 | 5376 |" in table  # 6 x 16*16*3 + 3 x 16*16 sub-pixels
    assert "WebP lossless (method 4)" in table
    assert "JPEG XL lossless (effort 7) | skipped: neither pillow_jxl nor imagecodecs" in table
    assert "Plots: not drawn (--no-plots)." in table
    assert (out / "results.md").read_text() == table

    with open(out / "results.csv", newline="") as handle:
        rows = {row["codec"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"osoa", "no-adapt", "finetune-f16", "finetune-f32", "png", "webp", "jxl", "tar-xz"}
    assert rows["jxl"]["bytes"] == "" and rows["jxl"]["note"].startswith("skipped")
    assert float(rows["osoa"]["size_vs_osoa"]) == 1.0
    present = [key for key in ("webp", "tar-xz") if classical.CODECS[key].missing() is None]  # optional here
    for codec in ["osoa", "no-adapt", "png"] + present:
        row = rows[codec]
        assert int(row["bytes"]) > 0 and float(row["compress_s"]) > 0 and float(row["decompress_s"]) > 0
        assert float(row["bpsp"]) == pytest.approx(8 * int(row["bytes"]) / 5376)
        assert 5 < float(row["peak_rss_compress_mb"]) < 4000
    # The paper's baseline is counted as a whole archive: the same container as --no-adapt.
    fine = rows["finetune-f16"]
    assert fine["measured_as"] == "in-process" and fine["peak_rss_compress_mb"] == ""
    assert int(fine["bytes"]) > int(rows["osoa"]["bytes"])  # ~6k parameters cost more than 9 small images
    # The real PNG codec reported what Pillow writes for these pixels.
    png = sum(len(_png(Image.open(p))) for p in sorted(tiny_folder.glob("*.png")))
    assert int(rows["png"]["bytes"]) == png


def test_scaling_folder_and_table(tiny_folder, tmp_path):
    """Tiles cut in order and repeated; time per added tile leaves start-up out."""
    subpixels, distinct = tile_folder(tiny_folder, 12, TILE, tmp_path / "tiles")
    assert (subpixels, distinct) == (3 * 256 + 6 * 768 + 3 * 256, 9)  # grey0-2, rgb0-5, then grey0-2 again
    assert np.array_equal(np.asarray(Image.open(tmp_path / "tiles" / "000009.png")),
                          np.asarray(Image.open(tiny_folder / "grey0.png")))
    rows = [ScalingRow(10, 10, 7680, 1000, 12.0, 300.0), ScalingRow(100, 100, 76800, 9000, 30.0, 310.0)]
    table = "\n".join(report._scaling_table(BenchResult(None, {}, 0.0, [], rows)))
    assert "| 100 | 100 | 76800 | 0.938 | 30.0 | 300.0 | 200.0 |" in table  # (30 - 12) s / 90 tiles
    assert "peak memory x1.03" in table


SHIPPED_MODELS = sorted(json.loads((REPO / "models" / "manifest.json").read_text())["models"])


class _Stop(Exception):
    """Ends a bench run at its first osoa-zip compress: the command line is what is wanted."""


@pytest.mark.parametrize("model", SHIPPED_MODELS)
def test_bench_and_compress_adapt_at_the_same_rate(model, tiny_folder, tmp_path, monkeypatch):
    """`bench --model M` measures the setting `compress --model M` uses: without --lr, both
    adapt at the rate M's manifest entry recommends (else the default), and so does the API."""
    commands = []

    def caught(argv, env=None):
        commands.append(argv)
        if "compress" in argv:
            raise _Stop
        return Measured(0.0, 0.0, b"")

    monkeypatch.setattr(runner, "run_measured", caught)
    result = CliRunner().invoke(main, ["bench", str(tiny_folder), "--model", model, "--limit", "1", "--no-plots",
                                       "-o", str(tmp_path / "results")])
    assert isinstance(result.exception, SystemExit) and "_Stop" in result.stderr, result.output
    compressing = commands[-1]
    assert compressing[compressing.index("--model") + 1] == model
    bench_rate = float(compressing[compressing.index("--learning-rate") + 1])

    (tmp_path / "empty").mkdir()
    archive = tmp_path / "empty.osoa"
    result = CliRunner().invoke(main, ["compress", "-q", "--model", model, str(tmp_path / "empty"), str(archive)])
    assert result.exit_code == 0, result.output
    with open(archive, "rb") as handle:
        compress_rate = read_archive(handle)[0]["adaptation"]["learning_rate"]
    output = io.BytesIO()
    compress([tmp_path / "empty"], output, model=model)
    api_rate = read_archive(io.BytesIO(output.getvalue()))[0]["adaptation"]["learning_rate"]

    recommended = available_models()[model].get("adaptation", {}).get("learning_rate", DEFAULT_LEARNING_RATE)
    assert bench_rate == compress_rate == api_rate == recommended


def test_scaling_counts_are_checked():
    result = CliRunner().invoke(main, ["bench", str(EXAMPLES), "--scaling", "100,0"])
    assert result.exit_code == 2 and "--scaling counts must be positive" in result.output


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True, compress_level=9)
    return buffer.getvalue()


def test_model_batches_are_the_archives_batches(tiny_folder):
    """The bench's own batching codes to exactly the --no-adapt archive's per-batch bits."""
    archive = io.BytesIO()
    frozen = AdaptationConfig(adapt=False, tile_size=TILE, batch_size=BATCH, batch_pixels=0)
    compress([tiny_folder], archive, MODEL, frozen, triage=False)
    archive.seek(0)
    recorded = batch_statistics(archive)
    coder = OnlineAdapter(load_model(MODEL), frozen)
    batches = model_batches(tiny_folder, TILE, BATCH)
    assert [(8 * len(coder.encode(batch)[0]), batch.size) for batch in batches] == recorded
    assert {batch.shape[1] for batch in batches} == {1, 3}


def test_fine_tune_and_store_counts_what_a_decoder_would_get(tiny_folder):
    """Weights: xz of the tuned parameters' float16 values, on the weight grid.  Data: exactly what
    coding the batches with those weights, frozen, gives.  And it decodes back to the pixels."""
    bundle = load_model(MODEL)
    batches = model_batches(tiny_folder, TILE, BATCH)
    result = finetune.fine_tune_and_store(bundle, CONFIG, batches)
    assert result.decoded_exactly

    # Tune again, independently of the bench's storing code: same engine, same settings, no guard.
    tuner = OnlineAdapter(bundle, finetune._tuning_config(CONFIG))
    for batch in batches:
        tuner.encode(batch)
    networks, values = dict(bundle.networks), []
    for channels in (1, 3):
        tuned = finetune._adapted_network(tuner, channels)
        restored = copy.deepcopy(bundle.network(channels))
        with torch.no_grad():
            for name, parameter in sorted(restored.named_parameters()):
                if not dict(tuned.named_parameters())[name].requires_grad:
                    continue  # not adapted (grey networks adapt their last layers): θ0's, not stored
                master = dict(tuned.named_parameters())[name].detach()
                on_grid = name.endswith((".weight", ".bias"))
                half = (quantize_weight(master) if on_grid else master).numpy().astype("<f2")
                values.append(half)
                back = torch.from_numpy(half.astype(np.float64))
                parameter.copy_(quantize_weight(back) if on_grid else back)
                if on_grid:  # the coded model is on the engine's weight grid
                    scaled = parameter * 2 ** WEIGHT_FRAC_BITS
                    assert torch.equal(scaled, torch.round(scaled))
        networks[channels] = restored
    stored = result.stores["float16"]
    assert lzma.decompress(stored.payload) == b"".join(v.tobytes() for v in values)
    assert result.stored_values == sum(v.size for v in values)
    assert stored.weight_bytes == len(stored.payload)

    frozen = OnlineAdapter(FlowBundle("check", "", bundle.config, networks), AdaptationConfig(
        adapt=False, tile_size=TILE, batch_size=BATCH, batch_pixels=0))
    coded = [8 * len(frozen.encode(batch)[0]) for batch in batches]
    assert coded == stored.batch_bits
    assert sum(coded) == 8 * stored.data_bytes
    assert stored.total_bytes == stored.weight_bytes + stored.data_bytes
    assert result.stores["float32"].weight_bytes > stored.weight_bytes


def test_peak_memory_is_the_childs_not_the_benchmarks():
    """Linux carries peak RSS across fork: the launcher keeps the bench's size out of the job's."""
    ballast = torch.ones(60_000_000, dtype=torch.float32)  # 240 MB resident here
    small = run_measured([sys.executable, "-c", "pass"])
    large = run_measured([sys.executable, "-c", "import numpy; a = numpy.ones(40_000_000); a += 1"])
    assert float(ballast[-1]) == 1.0
    assert small.peak_rss_mb < 100
    assert large.peak_rss_mb > 300  # 320 MB of float64
