"""The benchmark's outputs: a markdown report (also printed), CSV files and PNG plots.

Ratios are sizes relative to osoa-zip's default (OSOA) archive of the same
images: 1.10 means 10% larger than OSOA.  Plots need matplotlib (the
`bench` extra); without it the report says that none were drawn.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ..layout import GROUP_SUBPIXELS
from .results import FINE_TUNE, FROZEN, OSOA, STORED_AS_FILES, BenchResult, Row, SetResult

SUMMARY_CODECS = [(FROZEN, "pretrained only"), (FINE_TUNE, "fine-tune + store (paper)"), ("png", "PNG"),
                  ("webp", "WebP-LL"), ("jxl", "JPEG XL-LL"), ("tar-xz", "tar+xz")]


def _number(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _rate(value) -> str:
    """MB/s: three significant digits (osoa-zip is near 0.1, tar+xz near 10)."""
    return "—" if value is None else f"{value:.3g}"


def _row_of(result: SetResult, codec: str) -> Row | None:
    return next((row for row in result.rows if row.codec == codec), None)


def size_ratio(result: SetResult, codec: str) -> float | None:
    """Codec size / OSOA size on the same images (None if skipped)."""
    row, osoa = _row_of(result, codec), _row_of(result, OSOA)
    return None if row is None or row.skipped or not osoa.bytes else row.bytes / osoa.bytes


def _header(result: BenchResult) -> list[str]:
    options, machine, config = result.options, result.machine, result.options.config
    return [
        f"Command: `{options.command}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores (lscpu); {machine['system']}; Python "
        f"{machine['python']}, torch {machine['torch']}, OMP_NUM_THREADS={machine['threads']}; "
        f"osoa-zip {machine['osoa_zip']}; {machine['date']}; load average {machine['load']}.",
        "",
        f"Model `{options.model}`; adaptation: learning rate {config.learning_rate:g}, "
        f"{config.steps_per_batch} optimiser step(s) per batch, batches of {config.batch_size} tiles of "
        f"{config.tile_size} (or {config.batch_pixels} pixels of smaller tiles, "
        f"{config.gray_batch_pixels or config.batch_pixels} of grey ones; at most {config.batch_pixels_max} "
        f"pixels), θ0 kept after "
        f"{config.give_up_after or 'never'} losses in a row; "
        f"{'first ' + str(options.limit) + ' images of each folder' if options.limit else 'all images'}.",
        "",
        "bpsp = compressed bits / (H·W·C) over the folder's images. Size ratios are codec bytes / osoa-zip "
        "default bytes (above 1: OSOA is smaller). Seconds are wall time of one process per codec and "
        f"direction, start-up included (osoa-zip's start-up, importing torch: {result.startup_seconds:.1f} s); "
        "MB/s are of raw pixels (one byte per sub-pixel); peak RSS is that process's (os.wait4; its "
        "launcher's ~11 MB is the floor). "
        "Fine-tune + store runs inside the benchmark process on the exact engine: its seconds exclude "
        "start-up, its tuning pass also codes each batch (as OSOA does), and its memory is n/a. "
        "Every decompression was checked against the original pixels.",
    ]


def _summary_table(result: BenchResult) -> list[str]:
    lines = ["| set | images | sub-pixels | OSOA bpsp | " + " | ".join(f"{name} / OSOA" for _, name in SUMMARY_CODECS)
             + " |", "|---|---:|---:|---:|" + "---:|" * len(SUMMARY_CODECS)]
    marked = False
    for item in result.sets:
        cells = []
        for codec, _ in SUMMARY_CODECS:
            ratio, row = size_ratio(item, codec), _row_of(item, codec)
            stored = row is not None and row.note.startswith(STORED_AS_FILES)
            marked |= stored
            cells.append("skipped" if ratio is None else f"{ratio:.3f}" + ("*" if stored else ""))
        osoa = _row_of(item, OSOA)
        stored = osoa.note.startswith(STORED_AS_FILES)
        marked |= stored
        lines.append(f"| {item.bench_set.name} | {item.bench_set.images} | {item.bench_set.subpixels} | "
                     f"{_number(osoa.bpsp)}{'*' if stored else ''} | " + " | ".join(cells) + " |")
    if marked:
        lines += ["", "\\* that osoa-zip archive stored some or all images as files (the model coded them larger "
                      "than the files); see the set's notes."]
    return lines


def _set_table(item: SetResult) -> list[str]:
    lines = [f"#### {item.bench_set.name}: {item.bench_set.images} images, {item.bench_set.subpixels} sub-pixels",
             "", "| codec | bpsp | bytes | size / OSOA | compress s | decompress s | compress MB/s | "
             "decompress MB/s | peak RSS compress MB | peak RSS decompress MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for row in item.rows:
        if row.skipped:
            lines.append(f"| {row.label} | {row.note} | | | | | | | | |")
            continue
        ratio = size_ratio(item, row.codec)
        memory = ("n/a", "n/a") if row.measured_as == "in-process" else (
            _number(row.compress_rss_mb, 0), _number(row.decompress_rss_mb, 0))
        lines.append(f"| {row.label} | {_number(row.bpsp)} | {row.bytes} | {_number(ratio)} | "
                     f"{_number(row.compress_seconds, 2)} | {_number(row.decompress_seconds, 2)} | "
                     f"{_rate(row.megabytes_per_second(row.compress_seconds))} | "
                     f"{_rate(row.megabytes_per_second(row.decompress_seconds))} | {memory[0]} | {memory[1]} |")
        if row.note:
            notes.append(f"{row.label}: {row.note}")
    if item.fine_tune_note:
        notes.append(item.fine_tune_note)
    if item.bench_set.skipped:
        notes.append(f"{len(item.bench_set.skipped)} files skipped (not 8-bit L/LA/RGB/RGBA images)")
    return lines + [""] + [f"- {note}" for note in notes]


def _scaling_table(result: BenchResult) -> list[str]:
    lines = ["#### Scaling: osoa-zip compress on growing numbers of tiles",
             "", "| tiles | distinct | sub-pixels | bpsp | seconds | ms per tile | ms per added tile | MB/s | "
                 "peak RSS MB |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    previous = None
    for row in result.scaling:
        # Time per tile beyond the previous run: start-up and model loading cancel out.
        added = ("—" if previous is None or row.tiles <= previous.tiles else
                 f"{1000 * (row.seconds - previous.seconds) / (row.tiles - previous.tiles):.1f}")
        lines.append(f"| {row.tiles} | {row.distinct} | {row.subpixels} | {8 * row.bytes / row.subpixels:.3f} | "
                     f"{row.seconds:.1f} | {1000 * row.seconds / row.tiles:.1f} | {added} | "
                     f"{_rate(row.subpixels / 1e6 / row.seconds)} | {row.peak_rss_mb:.0f} |")
        previous = row
    first, last = result.scaling[0], result.scaling[-1]
    lines += ["", "- Tiles are cut from the first folder and repeat once it runs out, so bpsp here is not a "
                  "compression result (the model may adapt to tiles it has seen); time and memory are.",
              f"- From {first.tiles} to {last.tiles} tiles: time per tile x"
                  f"{(last.seconds / last.tiles) / (first.seconds / first.tiles):.2f} (1.00 = linear; start-up "
                  f"weighs on the smallest run, which 'ms per added tile' leaves out), peak memory "
                  f"x{last.peak_rss_mb / first.peak_rss_mb:.2f} (the archiver holds one image group, up to "
                  f"{GROUP_SUBPIXELS} sub-pixels, in memory)."]
    return lines


def markdown(result: BenchResult) -> str:
    lines = ["### osoa-zip bench", ""] + _header(result) + [""] + _summary_table(result) + [""]
    for item in result.sets:
        lines += _set_table(item) + [""]
    if result.scaling:
        lines += _scaling_table(result) + [""]
    lines.append(f"- Plots: {result.plot_note}")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["set", "codec", "label", "images", "subpixels", "bytes", "bpsp", "size_vs_osoa", "compress_s",
              "decompress_s", "compress_mb_s", "decompress_mb_s", "peak_rss_compress_mb", "peak_rss_decompress_mb",
              "measured_as", "note"]


def _write_csv(result: BenchResult, path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_FIELDS)
        for item in result.sets:
            for row in item.rows:
                in_process = row.measured_as == "in-process"
                writer.writerow([row.set_name, row.codec, row.label, item.bench_set.images, row.subpixels,
                                 row.bytes, row.bpsp, size_ratio(item, row.codec), row.compress_seconds,
                                 row.decompress_seconds, row.megabytes_per_second(row.compress_seconds),
                                 row.megabytes_per_second(row.decompress_seconds),
                                 None if in_process else row.compress_rss_mb,
                                 None if in_process else row.decompress_rss_mb, row.measured_as, row.note])


def _write_scaling_csv(result: BenchResult, path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tiles", "distinct", "subpixels", "bytes", "seconds", "peak_rss_mb"])
        for row in result.scaling:
            writer.writerow([row.tiles, row.distinct, row.subpixels, row.bytes, row.seconds, row.peak_rss_mb])


def _plots(result: BenchResult, folder: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot, ticker

    written = []
    for item in result.sets:
        figure, axes = pyplot.subplots(figsize=(7, 4))
        for label, values in item.curves.items():
            axes.plot(range(1, len(values) + 1), values, label=label, linewidth=1,
                      marker="." if len(values) < 40 else None)
        axes.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        fine = _row_of(item, FINE_TUNE)
        weights = "" if fine is None or fine.skipped else f" (fine-tune + store with its weights: {fine.bpsp:.2f} bpsp)"
        axes.set(xlabel="batch (archive order)", ylabel="bits per sub-pixel",
                 title=f"{item.bench_set.name}: bpsp per batch{weights}")
        axes.legend(fontsize=8)
        written.append(folder / f"batches-{item.bench_set.name}.png")
        figure.tight_layout()
        figure.savefig(written[-1], dpi=120)
        pyplot.close(figure)
    figure, panels = pyplot.subplots(1, len(result.sets), figsize=(5 * len(result.sets), 4), squeeze=False)
    for axes, item in zip(panels[0], result.sets):
        for row in item.rows:
            if not row.skipped and row.compress_seconds:
                axes.scatter(row.compress_seconds, row.bpsp, label=row.label)
        axes.set(xscale="log", yscale="log", xlabel="compress seconds", ylabel="bits per sub-pixel",
                 title=item.bench_set.name)
        for axis in (axes.xaxis, axes.yaxis):
            axis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            axis.set_minor_formatter(ticker.NullFormatter())
    panels[0][0].legend(fontsize=7)
    written.append(folder / "size-vs-time.png")
    figure.tight_layout()
    figure.savefig(written[-1], dpi=120)
    pyplot.close(figure)
    if result.scaling:
        figure, (left, right) = pyplot.subplots(1, 2, figsize=(9, 4))
        tiles = [row.tiles for row in result.scaling]
        left.plot(tiles, [row.seconds for row in result.scaling], marker="o")
        left.set(xlabel="tiles", ylabel="compress seconds", title="time")
        right.plot(tiles, [row.peak_rss_mb for row in result.scaling], marker="o")
        right.set(xlabel="tiles", ylabel="peak RSS (MB)", title="memory", ylim=(0, None))
        written.append(folder / "scaling.png")
        figure.tight_layout()
        figure.savefig(written[-1], dpi=120)
        pyplot.close(figure)
    return written


def write_outputs(result: BenchResult, final: bool = True) -> None:
    """results.md, results.csv (+ scaling.csv) and the plots; `final` False: the sets so far, no plots."""
    folder = result.options.output
    result.outputs = []
    if not final:
        result.plot_note = "not drawn yet (the run is still going)."
    elif not result.options.plots:
        result.plot_note = "not drawn (--no-plots)."
    else:
        try:
            plots = _plots(result, folder)
        except ImportError:
            result.plot_note = "not drawn: matplotlib is not installed (pip install 'osoa-zip[bench]')."
        else:
            result.outputs += plots
            result.plot_note = ", ".join(f"`{p.name}`" for p in plots) + f" in `{folder}`."
    _write_csv(result, folder / "results.csv")
    result.outputs.append(folder / "results.csv")
    if result.scaling:
        _write_scaling_csv(result, folder / "scaling.csv")
        result.outputs.append(folder / "scaling.csv")
    (folder / "results.md").write_text(markdown(result))
    result.outputs.append(folder / "results.md")
