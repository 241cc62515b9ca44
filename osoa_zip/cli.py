"""The osoa-zip command line: parses arguments, calls osoa_zip.archive, reports.

Exit codes: 0 success, 1 data or archive error, 2 usage error.  Errors are
one line on stderr, never a traceback.
"""
from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import click

from . import __version__
from .archive import (AdaptationConfig, ArchiveError, ModelError, RefusedEntries, UsageError, compress, decompress,
                      test_archive)
from .files.scan import SourceError, listed_name
from .models.registry import DEFAULT_MODEL, available_models

DATA_ERROR = 1
USAGE_ERROR = 2


def _fail(message: str, code: int) -> None:
    click.echo(f"osoa-zip: error: {message}", err=True)
    sys.exit(code)


@contextmanager
def _progress(total: int | None, quiet: bool, unit: str):
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm
    with tqdm(total=total, unit=unit, file=sys.stderr, leave=False) as bar:
        yield bar.update


@contextmanager
def _reported_errors():
    try:
        yield
    except UsageError as error:
        _fail(str(error), USAGE_ERROR)
    except RefusedEntries as error:  # one line per refused entry; everything else was restored
        for reason in error.reasons[:-1]:
            click.echo(f"osoa-zip: error: {reason}", err=True)
        _fail(error.reasons[-1], DATA_ERROR)
    except (ArchiveError, ModelError) as error:
        _fail(str(error), DATA_ERROR)
    except OSError as error:
        _fail(f"{error.filename or ''}: {error.strerror or error}".lstrip(": "), DATA_ERROR)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as error:  # noqa: BLE001 — a bug must still not print a traceback at users
        if os.environ.get("OSOA_ZIP_DEBUG"):
            raise
        _fail(f"internal error ({type(error).__name__}: {error}); set OSOA_ZIP_DEBUG=1 for details", DATA_ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="osoa-zip")
def main() -> None:
    """Lossless archiver for folders of images, with a learned model that adapts
    to your images as it compresses them (One-Shot Online Adaptation).

    Decompression replays the adaptation, so it takes about as long as compression.
    """


@main.command("compress")
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.argument("archive", type=click.Path(path_type=Path))
@click.option("-T", "--files-from", type=click.File("rb"), default=None,
              help="Also archive the paths listed in this file ('-' for standard input), stored as given.")
@click.option("-0", "--null", "null_separated", is_flag=True, help="--files-from paths end with NUL, not newline.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Pretrained model to start from.")
@click.option("--no-adapt", is_flag=True, help="Code with the pretrained model frozen (no online adaptation).")
@click.option("--learning-rate", "--lr", type=float, default=AdaptationConfig.learning_rate, show_default=True,
              help="Adam learning rate of the online adaptation.")
@click.option("--steps-per-batch", type=click.IntRange(0, 100), default=AdaptationConfig.steps_per_batch,
              show_default=True, help="Optimiser steps after each batch.")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=AdaptationConfig.batch_size,
              show_default=True, help="Tiles per batch (one adaptation step per batch).")
@click.option("--tile-size", type=click.IntRange(2, 512), default=AdaptationConfig.tile_size, show_default=True,
              help="Images are cut into tiles of this side (even).")
@click.option("--segment-size", type=click.IntRange(0, None), default=0, show_default=True,
              help="Restart the model from the pretrained weights every N batches (0: never).")
@click.option("--byte-exact", is_flag=True,
              help="Restore images byte for byte: an image takes the model path only if re-encoding "
                   "its pixels gives back the original file exactly.")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing archive.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
@click.option("-v", "--verbose", is_flag=True, help="Print per-batch statistics.")
def compress_command(sources, archive, files_from, null_separated, model, no_adapt, learning_rate, steps_per_batch,
                     batch_size, tile_size, segment_size, byte_exact, force, quiet, verbose) -> None:
    """Pack SOURCES into ARCHIVE ('-' for standard output).

    A folder contributes its contents, a file its name; paths from --files-from
    are stored as given (e.g. `find data -name '*.png' -print0 | osoa-zip
    compress -T - -0 out.osoa`).
    """
    with _reported_errors():
        if tile_size % 2:
            raise UsageError("--tile-size must be even")
        sources = list(sources)
        if files_from is not None:
            sources += _listed_sources(files_from.read(), null_separated)
        if not sources:
            raise UsageError("nothing to archive: give SOURCES or --files-from")
        config = AdaptationConfig(adapt=not no_adapt, learning_rate=learning_rate, steps_per_batch=steps_per_batch,
                                  batch_size=batch_size, tile_size=tile_size, segment_batches=segment_size)
        with _progress(None, quiet, "tiles") as progress:
            if str(archive) == "-":
                with _naming_errors("standard output"):
                    summary = compress(sources, sys.stdout.buffer, model, config, progress, _warner(quiet),
                                       byte_exact)
                    sys.stdout.buffer.flush()  # a full disk must fail here, not at interpreter exit
            else:
                if archive.exists() and not force:
                    raise UsageError(f"{archive} exists (use -f to overwrite)")
                summary = _compress_to_file(sources, archive, model, config, progress, _warner(quiet),
                                            byte_exact)
        if not quiet:
            _report(summary, "compressed", verbose)


def _listed_sources(listing: bytes, null_separated: bool) -> list[tuple[Path, str]]:
    separator = b"\0" if null_separated else b"\n"
    paths = [os.fsdecode(item) for item in listing.split(separator) if item.strip()]
    try:
        return [(Path(path), listed_name(path)) for path in paths]
    except SourceError as error:
        raise UsageError(str(error)) from None


def _warner(quiet: bool):
    return (lambda message: None) if quiet else (lambda message: click.echo(f"osoa-zip: warning: {message}", err=True))


@contextmanager
def _naming_errors(name: str):
    """A failed write (disk full, file too large) names what was being written."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            error.filename = name
        raise


def _compress_to_file(sources, archive: Path, model, config, progress, warn, byte_exact):
    """Write beside the target and rename at the end: never a half-written archive."""
    directory = archive.resolve().parent
    handle, temporary = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=".part", dir=directory)
    try:
        with _naming_errors(str(archive)), os.fdopen(handle, "wb") as output:
            summary = compress(sources, output, model, config, progress, warn, byte_exact)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp's 0600 is not what users expect
        os.replace(temporary, archive)
        return summary
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


@main.command("decompress")
@click.argument("archive", type=click.Path(path_type=Path, allow_dash=True))
@click.argument("destination", type=click.Path(path_type=Path))
@click.argument("patterns", nargs=-1)
@click.option("-f", "--force", is_flag=True, help="Overwrite existing files in DESTINATION.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
@click.option("-v", "--verbose", is_flag=True, help="Print timing details.")
def decompress_command(archive, destination, patterns, force, quiet, verbose) -> None:
    """Restore ARCHIVE ('-' for standard input) into DESTINATION (created if missing).

    With PATTERNS (shell wildcards such as 'cats/*.png', quoted), only the matching
    entries, or everything below a matching folder, are restored.  The whole
    archive is still decoded: each batch depends on the ones before it.
    """
    with _reported_errors():
        with _progress(None, quiet, "files") as progress, _open_archive(archive) as source:
            summary = decompress(source, destination, force, progress, list(patterns))
        if not quiet:
            _report(summary, "restored", verbose)


@contextmanager
def _open_archive(archive: Path):
    if str(archive) == "-":
        yield sys.stdin.buffer
        return
    if not archive.is_file():
        raise UsageError(f"{archive}: no such file")
    with open(archive, "rb") as handle:
        yield handle


@main.command("test")
@click.argument("archive", type=click.Path(path_type=Path, allow_dash=True))
@click.option("-q", "--quiet", is_flag=True, help="Only the exit code tells.")
def test_command(archive, quiet) -> None:
    """Decode and verify ARCHIVE completely, writing nothing (exit 0 if intact, 1 if not)."""
    with _reported_errors():
        with _progress(None, quiet, "files") as progress, _open_archive(archive) as source:
            summary = test_archive(source, progress)
        if not quiet:
            click.echo(f"{archive}: OK ({summary.files} files, {summary.images} images)")


@main.command("list")
@click.argument("archive", type=click.Path(path_type=Path, allow_dash=True))
def list_command(archive) -> None:
    """List ARCHIVE's entries: kind, size, how each was coded, and its share of the archive."""
    from .inspect import read_table
    with _reported_errors(), _open_archive(archive) as source:
        _, entries = read_table(source)
        click.echo(f"{'kind':8} {'size':>12} {'coded':>10} {'method':8} {'bpsp':>6}  name")
        for entry in entries:
            unit = "sub-px" if entry.kind == "image" else ""
            bpsp = f"{8 * entry.coded_bytes / entry.size:6.3f}" if entry.kind == "image" and entry.size else ""
            method = entry.method if not entry.method.startswith("->") else ""
            name = entry.name + (f" {entry.method}" if entry.method.startswith("->") else "")
            click.echo(f"{entry.kind:8} {str(entry.size) + unit:>12} {entry.coded_bytes:>10.0f} {method:8} "
                       f"{bpsp:>6}  {name}")


@main.command("info")
@click.argument("archive", type=click.Path(path_type=Path, allow_dash=True))
def info_command(archive) -> None:
    """Show ARCHIVE's header (model and hash, engine, adaptation settings) and totals."""
    import json

    from .inspect import read_table
    with _reported_errors(), _open_archive(archive) as source:
        header, entries = read_table(source)
        click.echo(json.dumps(header, indent=2, sort_keys=True))
        images = [e for e in entries if e.kind == "image"]
        subpixels = sum(e.size for e in images)
        bits = 8 * sum(e.coded_bytes for e in images)
        click.echo(f"entries: {len(entries)} ({len(images)} images, "
                   f"{sum(e.kind == 'file' for e in entries)} other files)")
        if subpixels:
            click.echo(f"images: {subpixels} sub-pixels at {bits / subpixels:.3f} bits per sub-pixel")


@main.command("models")
def models_command() -> None:
    """List the installed models (the default is marked with *)."""
    with _reported_errors():
        for name, entry in sorted(available_models().items()):
            mark = "*" if name == DEFAULT_MODEL else " "
            click.echo(f"{mark} {name:24} sha256:{entry['sha256'][:16]}  {entry.get('parameters', '?'):>8} "
                       f"params  {entry.get('description', '')}")


def _report(summary, verb: str, verbose: bool) -> None:
    line = f"{verb} {summary.files} files ({summary.images} images) in {summary.seconds:.1f}s"
    if summary.image_subpixels:
        line += f"; images at {summary.bits_per_subpixel:.3f} bits per sub-pixel"
    click.echo(line, err=True)
    if verbose:
        for index, batch in enumerate(summary.batches):
            click.echo(f"  batch {index}: {batch.bits / batch.subpixels:.3f} bpsp, {batch.seconds:.2f}s", err=True)


if __name__ == "__main__":
    main()
