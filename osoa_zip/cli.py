"""The osoa-zip command line: parses arguments, calls osoa_zip.archive, reports.

Exit codes: 0 success, 1 data or archive error, 2 usage error.  Errors are
one line on stderr, never a traceback.
"""
from __future__ import annotations

import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import click
from click.core import ParameterSource

from . import __version__, torch_loading
from .adapt.config import DEFAULT_LEARNING_RATE, MAX_CHAIN_BATCHES, PARAMETER_SELECTIONS
from .adapt.defaults import adaptation_for
from .adapt.flags import (
    FLAG_NOTES,
)
from .adapt.presets import DEFAULT_LEVEL, PRESETS
from .archive import (
    AdaptationConfig,
    ArchiveError,
    ModelError,
    RefusedEntries,
    UsageError,
    compress,
    decompress,
    extract_entry,
    test_archive,
)
from .container.records import DEFAULT_BLOCK_BYTES, MAX_BLOCK_BYTES
from .cpus import available_cpus, default_threads
from .exact.grid import requested_kernel
from .files.scan import SourceError, listed_name
from .layout import ClusterError, PartsError
from .models.catalog import DEFAULT_MODEL, available_models

DATA_ERROR = 1
USAGE_ERROR = 2
BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a process killed by it


def _fail(message: str, code: int) -> None:
    click.echo(f"osoa-zip: error: {message}", err=True)
    sys.exit(code)


class _Bar:
    """Progress in bytes (input bytes when compressing, archive bytes when reading)."""

    def __init__(self, bar) -> None:
        self._bar = bar

    def __call__(self, amount: float) -> None:
        self._bar.update(amount)

    def set_total(self, total: int) -> None:
        self._bar.total = total
        self._bar.refresh()


@contextmanager
def _progress(total: int | None, quiet: bool, description: str):
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm
    with tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
              leave=False) as bar:
        yield _Bar(bar)


def _archive_size(archive: Path) -> int | None:
    return archive.stat().st_size if str(archive) != "-" and archive.is_file() else None


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
    except (ArchiveError, ModelError, ClusterError, PartsError) as error:
        _fail(str(error), DATA_ERROR)
    except BrokenPipeError:
        # The reader went away (`osoa-zip list a.osoa | head`): end quietly, as a process
        # killed by SIGPIPE would, and keep Python from complaining while it flushes stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(BROKEN_PIPE)
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
    torch_loading.prepare(_one_torch_thread_unless_asked)  # torch loads with the first model, if any
    with _reported_errors():
        try:
            requested_kernel(os.environ)  # a wrong OSOA_ZIP_KERNEL is refused whatever the model
        except ValueError as error:
            raise UsageError(str(error)) from None


def _one_torch_thread_unless_asked(torch) -> None:
    """One intra-op thread unless OMP_NUM_THREADS says otherwise: the engine's tensors are
    small, and a second OpenMP thread cost time on an idle 2-core machine (tiles64 4.50 /
    5.01 s with one, 5.07 / 5.28 s with two; photos768 9.33 / 10.40 against 11.34 / 12.88;
    docs/PERFORMANCE.md) and far more on a loaded one.  Only the matrix products of wide
    blocks, where a second thread does pay, get two (exact/stack.py), unless segments
    run side by side (adapt/segments.py).  Segments (-T) are the way to use more cores."""
    if "OMP_NUM_THREADS" not in os.environ:
        from .exact.stack import set_gemm_threads
        torch.set_num_threads(1)
        set_gemm_threads(min(2, available_cpus()))


class _ByteSize(click.ParamType):
    """A size in bytes: a number, optionally with K, M or G (powers of 1024), up to the largest block."""

    name = "size"
    _UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("IB").removesuffix("B")
        unit = text[-1:] if text[-1:] in self._UNITS else ""
        try:
            size = int(text[:len(text) - len(unit)]) * self._UNITS[unit]
        except ValueError:
            self.fail(f"{value!r} is not a size (a number of bytes, optionally with K, M or G)", param, ctx)
        if not 0 <= size <= MAX_BLOCK_BYTES:
            self.fail(f"{value!r} is not between 0 and 4G", param, ctx)
        return size


def _level_options(command):
    """-1 ... -9, one line of --help each (osoa_zip/adapt/presets.py)."""
    for level in sorted(PRESETS, reverse=True):
        command = click.option(f"-{level}", "level", flag_value=level, help=PRESETS[level].summary)(command)
    return command


def _scaled_rates() -> str:
    """'; -7, -8, -9 take 2/3 of it' for the levels that scale the model's learning rate."""
    levels: dict[float, list[str]] = {}
    for level, chosen in sorted(PRESETS.items()):
        if chosen.rate_scale != 1:
            levels.setdefault(chosen.rate_scale, []).append(f"-{level}")
    return "".join(f"; {', '.join(names)} take{'s' if len(names) == 1 else ''} "
                   f"{Fraction(scale).limit_denominator(100)} of it" for scale, names in levels.items())


# Compress options a level sets, and the AdaptationConfig field each one fills.
_LEVEL_SETTINGS = {"steps_per_batch": "steps_per_batch", "batch_size": "batch_size", "batch_pixels": "batch_pixels",
                   "gray_batch_pixels": "gray_batch_pixels", "batch_pixels_max": "batch_pixels_max",
                   "chain_batches": "chain_batches", "tile_size": "tile_size", "segment_size": "segment_batches",
                   "adapt_params": "parameters", "gray_adapt_params": "gray_parameters",
                   "adapt_batches": "adapt_batches", "guard": "guard", "give_up_after": "give_up_after"}


def _given(name: str) -> bool:
    """Was this option given (command line or environment), not left at its default?"""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, ParameterSource.DEFAULT)


def _dask_options(command):
    """--dask ADDRESS and --dask-timeout (compress, decompress)."""
    command = click.option("--dask-timeout", type=click.FloatRange(0, min_open=True), default=10.0,
                           show_default=True, envvar="OSOA_ZIP_DASK_TIMEOUT", show_envvar=True,
                           help="Seconds to reach the Dask scheduler and see a worker.")(command)
    return click.option("--dask", "dask_address", metavar="ADDRESS", default=None,
                        help="Code the segments as tasks on the Dask cluster whose scheduler is at ADDRESS "
                             "(e.g. tcp://host:8786; needs osoa-zip[cluster] here and on the workers).  Same "
                             "output as on one machine.  Connect only to clusters you trust: a scheduler can "
                             "run code here (docs/CLUSTER.md).")(command)


@contextmanager
def _segments_on(address: str | None, timeout: float):
    """The Dask cluster that codes the segments (osoa_zip.cluster), or None: this machine's threads."""
    if address is None:
        yield None
        return
    if _given("threads"):
        raise UsageError("--dask and -T do not combine: the cluster's workers code the segments")
    from .cluster import connect
    with connect(address, timeout) as segments:
        yield segments


@main.command("compress")
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.argument("archive", type=click.Path(path_type=Path))
@_level_options
@click.option("--files-from", type=click.File("rb"), default=None,
              help="Also archive the paths listed in this file ('-' for standard input), stored as given.")
@click.option("-0", "--null", "null_separated", is_flag=True, help="--files-from paths end with NUL, not newline.")
@click.option("--exclude", "excludes", multiple=True, metavar="PATTERN",
              help="Leave out entries matching this shell pattern, as tar does: without '/' it matches a name "
                   "at any depth; a matching folder leaves out all below it (repeatable).")
@click.option("--exclude-from", type=click.File("rb"), default=None, metavar="FILE",
              help="Read --exclude patterns from FILE, one per line.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Pretrained model to start from.")
@click.option("--no-adapt", is_flag=True, help="Code with the pretrained model frozen (no online adaptation).")
@click.option("--learning-rate", "--lr", type=float, default=None,
              help=f"Adam learning rate of the online adaptation  [default: the model's own (see `osoa-zip "
                   f"models`), else {DEFAULT_LEARNING_RATE:g}{_scaled_rates()}]")
@click.option("--steps-per-batch", type=click.IntRange(0, 100), default=AdaptationConfig.steps_per_batch,
              show_default=True, help="Optimiser steps after each batch.")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=AdaptationConfig.batch_size,
              show_default=True, help="Tiles per batch (one adaptation step per batch).")
@click.option("--batch-pixels", type=click.IntRange(0, None), default=AdaptationConfig.batch_pixels,
              show_default=True, help="Small tiles go in batches of up to this many pixels, if that is more "
                                      "than --batch-size of them (0: always --batch-size).")
@click.option("--gray-batch-pixels", type=click.IntRange(0, None), default=AdaptationConfig.gray_batch_pixels,
              show_default=True, help="The same for grey images (0: as --batch-pixels); grey networks adapt "
                                      "their last layers only, where larger batches lose nothing.")
@click.option("--batch-pixels-max", type=click.IntRange(0, None), default=AdaptationConfig.batch_pixels_max,
              show_default=True, help="Large tiles go in batches of at most this many pixels (at least one "
                                      "tile; 0: no cap).")
@click.option("--chain-batches", type=click.IntRange(1, MAX_CHAIN_BATCHES), default=AdaptationConfig.chain_batches,
              show_default=True, help="Bits-back models (VAE): code up to N batches on one stack, so that only "
                                      "one batch in N pays for its latents in full (1: each batch alone).")
@click.option("--tile-size", type=click.IntRange(2, 512), default=AdaptationConfig.tile_size, show_default=True,
              help="Images are cut into tiles of this side (even).")
@click.option("--segment-size", type=click.IntRange(0, None), default=AdaptationConfig.segment_batches,
              show_default=True,
              help="Restart the model from the pretrained weights every N batches (0: never), so that "
                   "segments can be coded and decoded side by side (-T).  Each restart costs size: "
                   "about 0.5-1.4% on RGB tiles at 32-256 batches, far less on grey images.")
@click.option("--adapt-params", type=click.Choice(PARAMETER_SELECTIONS), default=AdaptationConfig.parameters,
              help="Which parameters adapt: all; the last layer of each predictor; or only biases.  "
                   "[default: the model's choice (`osoa-zip models`), else all]")
@click.option("--gray-adapt-params", type=click.Choice(PARAMETER_SELECTIONS), default=AdaptationConfig.gray_parameters,
              show_default=True, help="The same for grey images (cheaper than all: a grey pixel costs the "
                                      "model as much as an RGB one).")
@click.option("--adapt-batches", type=click.IntRange(0, None), default=AdaptationConfig.adapt_batches,
              show_default=True, help="Stop adapting after N batches of each segment (0: never stop).")
@click.option("--guard/--no-guard", default=AdaptationConfig.guard, show_default=True,
              help="Per batch, code with the cheaper of the adapted model and the pretrained one "
                   "(never worse than --no-adapt; costs encoder time).")
@click.option("--give-up-after", type=click.IntRange(0, None), default=AdaptationConfig.give_up_after,
              show_default=True, help="With the guard: after the pretrained model wins N batches in a row, "
                                      "keep it and stop adapting that kind of image (0: never).")
@click.option("-T", "--threads", type=click.IntRange(0, 256), default=0,
              help=f"Code segments side by side on N threads; the output is the same for any N.  "
                   f"[default: 0, one per CPU this process may use, as memory allows ({default_threads()} here)]")
@click.option("--block-size", type=_ByteSize(), default=DEFAULT_BLOCK_BYTES, metavar="SIZE",
              help="Files not on the model path go into solid blocks of about SIZE bytes (K, M, G suffixes; "
                   "default 64M), sorted by type: one xz stream over many similar files, as 7z does.  "
                   "Larger blocks compress better; extracting one file decodes its whole block, and a damaged "
                   "block loses its files.  0: every file in a stream of its own.")
@click.option("--byte-exact", is_flag=True,
              help="Restore images byte for byte: an image takes the model path only if re-encoding "
                   "its pixels gives back the original file exactly.")
@click.option("--every-image", is_flag=True,
              help="Code every image the model can take, without deciding per image whether the model "
                   "beats its file (a group that codes larger than its files is stored as files).")
@click.option("-f", "--force", is_flag=True,
              help="Overwrite an existing archive; write one to a terminal.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
@click.option("-v", "--verbose", is_flag=True,
              help="Print the summary, per-batch statistics, and what image libraries said about each file.")
@_dask_options
def compress_command(sources, archive, level, files_from, null_separated, excludes, exclude_from, model, no_adapt,
                     learning_rate, threads, block_size, byte_exact, every_image, force, quiet, verbose, dask_address,
                     dask_timeout, **settings) -> None:
    """Pack SOURCES into ARCHIVE ('-' for standard output).

    A folder contributes its contents, a file its name; paths from --files-from
    are stored as given (e.g. `find data -name '*.png' -print0 | osoa-zip
    compress --files-from - -0 out.osoa`).

    A level (-1 fastest ... -9 smallest; -6 by default) sets the adaptation
    options below; an option given explicitly overrides its level's value.
    The archive records the settings, so decompression needs no level.
    """
    with _reported_errors():
        sources = list(sources)
        if files_from is not None:
            sources += _listed_sources(files_from.read(), null_separated)
        if not sources:
            raise UsageError("nothing to archive: give SOURCES or --files-from")
        if str(archive) == "-":
            _refuse_terminal(sys.stdout, "written to", force)
        patterns = list(excludes) + (_listed_patterns(exclude_from.read()) if exclude_from is not None else [])
        chosen = PRESETS[level or DEFAULT_LEVEL]
        if not _given("model"):
            model = chosen.model or model
        explicit = {field: settings[option] for option, field in _LEVEL_SETTINGS.items() if _given(option)}
        if _given("no_adapt"):
            explicit["adapt"] = not no_adapt
        if learning_rate is not None:
            explicit["learning_rate"] = learning_rate
        config = _level_settings(chosen, model, explicit)
        if str(archive) != "-" and archive.exists() and not force:
            raise UsageError(f"{archive} exists (use -f to overwrite)")
        with _segments_on(dask_address, dask_timeout) as cluster, _progress(None, quiet, "compressing") as progress, \
                _library_warnings(verbose):
            threads = 1 if cluster else _thread_count(threads)
            if str(archive) == "-":
                with _naming_errors("standard output"):
                    summary = compress(sources, sys.stdout.buffer, model, config, progress, _warner(quiet),
                                       byte_exact, threads, note=_noter(verbose), excludes=patterns,
                                       cluster=cluster, block_size=block_size, triage=not every_image)
                    sys.stdout.buffer.flush()  # a full disk must fail here, not at interpreter exit
            else:
                summary = _compress_to_file(sources, archive, model, config, progress, _warner(quiet),
                                            byte_exact, threads, _noter(verbose), patterns, cluster, block_size,
                                            triage=not every_image)
        if _summary_wanted(quiet, verbose):
            _report(summary, "compressed", verbose)


def _level_settings(chosen, model: str, explicit: dict) -> AdaptationConfig:
    """A level's adaptation settings for ``model``, the options given explicitly on top."""
    try:
        return chosen.config(model, **explicit)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _settings(**settings) -> AdaptationConfig:
    """The adaptation settings as given (AdaptationConfig checks them; the model's defaults
    fill in what is left unset, in the library)."""
    try:
        return AdaptationConfig(**settings)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _listed_sources(listing: bytes, null_separated: bool) -> list[tuple[Path, str]]:
    separator = b"\0" if null_separated else b"\n"
    paths = [os.fsdecode(item) for item in listing.split(separator) if item.strip()]
    try:
        return [(Path(path), listed_name(path)) for path in paths]
    except SourceError as error:
        raise UsageError(str(error)) from None


def _listed_patterns(listing: bytes) -> list[str]:
    """--exclude-from: one pattern a line, as tar -X reads them (empty lines ignored)."""
    return [os.fsdecode(line.rstrip(b"\r")) for line in listing.split(b"\n") if line.strip()]


def _refuse_terminal(stream, direction: str, force: bool) -> None:
    """Archives are binary: as xz, neither spray one over a terminal nor wait for one to be typed."""
    if not force and stream.isatty():
        raise UsageError(f"an archive cannot be {direction} a terminal (use -f to force)")


def _warner(quiet: bool):
    return (lambda message: None) if quiet else (lambda message: click.echo(f"osoa-zip: warning: {message}", err=True))


def _noter(verbose: bool):
    """What image libraries said about a file (one line each, naming it): shown with -v only."""
    return (lambda message: click.echo(f"osoa-zip: note: {message}", err=True)) if verbose else None


def _summary_wanted(quiet: bool, verbose: bool) -> bool:
    """As with xz and tar, a successful run says nothing on a stderr that is not a terminal, unless asked."""
    return verbose or (not quiet and sys.stderr.isatty())


@contextmanager
def _library_warnings(verbose: bool):
    """Python warnings raised outside an image read (those are attributed to their file): one
    line each with -v, else none."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        click.echo(f"osoa-zip: note: {category.__name__}: {' '.join(str(message).split())}", err=True)

    with warnings.catch_warnings():
        if verbose:
            warnings.simplefilter("default")
            warnings.showwarning = show
        else:
            warnings.simplefilter("ignore")
        yield


def _thread_count(threads: int) -> int:
    """-T: 0 means every CPU this process may use (affinity and cgroup quota), as many as
    its available memory holds (cpus.py)."""
    return threads or default_threads()


@contextmanager
def _naming_errors(name: str):
    """A failed write (disk full, file too large) names what was being written."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            error.filename = name
        raise


def _compress_to_file(sources, archive: Path, model, config, progress, warn, byte_exact, threads, note, excludes,
                      cluster, block_size, triage: bool = True):
    """Write beside the target and rename at the end: never a half-written archive."""
    directory = archive.resolve().parent
    handle, temporary = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=".part", dir=directory)
    try:
        with _naming_errors(str(archive)), os.fdopen(handle, "wb") as output:
            summary = compress(sources, output, model, config, progress, warn, byte_exact, threads,
                               note=note, excludes=excludes, cluster=cluster, block_size=block_size,
                               triage=triage)
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
@click.argument("destination", type=click.Path(path_type=Path), required=False)
@click.argument("patterns", nargs=-1)
@click.option("--stdout", "entry_to_stdout", metavar="NAME", default=None,
              help="Write the one entry NAME (a file or an image, as it would be restored) to standard output "
                   "instead of restoring into DESTINATION.")
@click.option("-f", "--force", is_flag=True,
              help="Overwrite existing files in DESTINATION; read an archive from, or write --stdout to, a "
                   "terminal.")
@click.option("--salvage", is_flag=True,
              help="Restore every intact entry of a damaged archive and list the lost ones (exit 1 if any). "
                   "Images are lost from a damaged batch to the end of its segment (see compress "
                   "--segment-size).")
@click.option("-T", "--threads", type=click.IntRange(0, 256), default=0,
              help=f"Decode segments side by side on N threads (written with compress --segment-size); "
                   f"the output is the same for any N.  [default: 0, one per CPU this process may use, "
                   f"as memory allows ({default_threads()} here)]")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
@click.option("-v", "--verbose", is_flag=True,
              help="Print the summary, and what the image library said about each file.")
@_dask_options
def decompress_command(archive, destination, patterns, entry_to_stdout, force, salvage, threads, quiet,
                       verbose, dask_address, dask_timeout) -> None:
    """Restore ARCHIVE ('-' for standard input) into DESTINATION (created if missing).

    With PATTERNS (shell wildcards such as 'cats/*.png', quoted), only the matching
    entries, or everything below a matching folder, are restored.  Every image
    batch is still decoded (each depends on the ones before it); solid blocks
    without a wanted file are only read and checked.

    `decompress ARCHIVE --stdout NAME` writes one entry to standard output instead
    (as tar -xOf and unzip -p do), once the whole archive has been verified.
    """
    if entry_to_stdout is not None:
        if dask_address is not None:
            _fail("--stdout NAME decodes on this machine: leave out --dask", 2)
        _entry_to_stdout(archive, destination, patterns, entry_to_stdout, force, salvage, threads, quiet)
        return
    with _reported_errors():
        if destination is None:
            raise UsageError("missing DESTINATION (or --stdout NAME)")
        if salvage and dask_address is not None:
            raise UsageError("--salvage decodes batch by batch, on this machine: leave out --dask")
        with _progress(_archive_size(archive), quiet, "decompressing") as progress, \
                _open_archive(archive, force) as source, _library_warnings(verbose), \
                _segments_on(dask_address, dask_timeout) as cluster:
            if salvage and str(archive) == "-":
                raise UsageError("--salvage needs an archive file, not standard input")
            summary = decompress(source, destination, force, progress, list(patterns), salvage,
                                 1 if cluster else _thread_count(threads), _noter(verbose), cluster)
        if _summary_wanted(quiet, verbose):
            _report(summary, "restored", verbose)
        if summary.lost or summary.damage:
            for line in summary.damage:
                click.echo(f"osoa-zip: damaged: {line}", err=True)
            for line in summary.lost:
                click.echo(f"osoa-zip: lost: {line}", err=True)
            _fail(f"salvaged {summary.files} files into {destination}; {len(summary.lost)} entries lost", DATA_ERROR)


def _entry_to_stdout(archive, destination, patterns, name, force, salvage, threads, quiet) -> None:
    with _reported_errors():
        if destination is not None or patterns:
            raise UsageError("--stdout NAME takes no DESTINATION or PATTERNS")
        if salvage:
            raise UsageError("--stdout and --salvage do not go together")
        _refuse_terminal(sys.stdout, "written to", force)
        with _progress(_archive_size(archive), quiet, "decompressing") as progress, \
                _open_archive(archive, force) as source, _naming_errors("standard output"):
            extract_entry(source, name, sys.stdout.buffer, progress, _thread_count(threads))
            sys.stdout.buffer.flush()


@contextmanager
def _open_archive(archive: Path, force: bool = False):
    if str(archive) == "-":
        _refuse_terminal(sys.stdin, "read from", force)
        yield sys.stdin.buffer
        return
    if not archive.is_file():
        raise UsageError(f"{archive}: no such file")
    with open(archive, "rb") as handle:
        yield handle


_FORCE_TERMINAL = click.option("-f", "--force", is_flag=True, help="Read an archive from a terminal.")


@main.command("test")
@click.argument("archive", type=click.Path(path_type=Path, allow_dash=True))
@click.option("-T", "--threads", type=click.IntRange(0, 256), default=0,
              help=f"Decode segments side by side on N threads.  [default: 0, one per CPU this process may "
                   f"use, as memory allows ({default_threads()} here)]")
@click.option("-q", "--quiet", is_flag=True, help="Only the exit code tells.")
@_FORCE_TERMINAL
def test_command(archive, threads, quiet, force) -> None:
    """Decode and verify ARCHIVE completely, writing nothing (exit 0 if intact, 1 if not)."""
    with _reported_errors():
        with _progress(_archive_size(archive), quiet, "testing") as progress, \
                _open_archive(archive, force) as source:
            summary = test_archive(source, progress, _thread_count(threads))
        if not quiet:
            click.echo(f"{archive}: OK ({summary.files} files, {summary.images} images)")


@main.command("list")
@click.argument("archive", type=click.Path(path_type=Path, allow_dash=True))
@_FORCE_TERMINAL
def list_command(archive, force) -> None:
    """List ARCHIVE's entries: kind, size, how each was coded, and its share of the archive."""
    from .table import read_table
    with _reported_errors(), _open_archive(archive, force) as source:
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
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object for scripts: the stored header (engine, model, adaptation, ...), "
                   "the format version and the totals.")
@_FORCE_TERMINAL
def info_command(archive, as_json, force) -> None:
    """Summarise ARCHIVE: format, model and hash, engine, adaptation settings, totals."""
    import json

    from .table import read_overview
    with _reported_errors(), _open_archive(archive, force) as source:
        overview = read_overview(source)
        if as_json:
            click.echo(json.dumps({**overview.header, "format": "%d.%d" % overview.version,
                                   "totals": overview.totals()}, sort_keys=True))
        else:
            for line in _info_lines(archive, overview):
                click.echo(line)


def _info_lines(archive: Path, overview) -> list[str]:
    """`info` for people: a few labelled lines, the adaptation settings last."""
    import json

    header, totals = overview.header, overview.totals()
    model, engine = header.get("model", {}), header.get("engine", {})
    lines = [f"{archive}: osoa-zip archive, format {'%d.%d' % overview.version}, "
             f"written by {header.get('creator') or 'an unknown version'}",
             f"model:      {model.get('name')} ({model.get('family', 'flow')}), sha256 {model.get('sha256')}",
             f"engine:     {engine.get('name')} version {engine.get('version')}",
             f"entries:    {totals['entries']} ({totals['images']} images, {totals['files']} other files, "
             f"{totals['directories']} directories, {totals['symlinks'] + totals['hardlinks']} links)"]
    if totals["files"]:
        blocks = totals["solid_blocks"]
        lines.append(f"files:      {totals['file_bytes']} bytes, coded in {totals['file_coded_bytes']}"
                     + (f" ({blocks} solid block{'s' if blocks != 1 else ''})" if blocks else ""))
    if totals["image_subpixels"]:
        lines.append(f"images:     {totals['image_subpixels']} sub-pixels, coded in {totals['image_coded_bytes']} "
                     f"bytes: {totals['bits_per_subpixel']:.3f} bits per sub-pixel")
    batches = overview.batches
    if batches:
        counts = totals["batches"]
        chains = counts["chains"]
        lines.append(f"batches:    {counts['count']} ({counts['pretrained']} coded with the pretrained model, "
                     f"{counts['rolled_back']} undid the update before them; {counts['segments']} segments; "
                     f"adaptation given up {counts['given_up']} times"
                     + (f"; {chains + counts['chained']} in {chains} bits-back chains" if chains else "") + ")")
        quarter = max(1, len(batches) // 4)
        for label, part in (("first", batches[:quarter]), ("last", batches[-quarter:])):
            part_bits, part_subpixels = sum(b.bits for b in part), sum(b.subpixels for b in part)
            lines.append(f"  {label} {len(part)} batches: {part_bits / part_subpixels:.3f} bits per sub-pixel")
    lines.append("adaptation:")
    lines += [f"  {key}: {json.dumps(value)}" for key, value in sorted(header.get("adaptation", {}).items())]
    return lines


@main.command("pretrain")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--family", metavar="NAME", default="flow", show_default=True,
              help="Model family: flow (integer discrete flow), vae (VAE coded with bits-back ANS), or another "
                   "registered one (docs/MODELS.md).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Checkpoint to write, e.g. models/my-model (its manifest is updated beside it).")
@click.option("--steps", type=click.IntRange(1, None), default=4000, show_default=True, help="Optimiser steps.")
@click.option("--tile-size", type=click.IntRange(8, 256), default=32, show_default=True,
              help="Side of the random training crops.")
@click.option("--crops-per-image", type=click.IntRange(1, None), default=64, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--lr", "learning_rate", type=float, default=2e-3, show_default=True)
@click.option("--hidden", type=click.IntRange(1, 512), default=None,
              help="Hidden channels of a new model (default 48).")
@click.option("--init-from", default=None,
              help="Fine-tune this installed model: its weights and its architecture (e.g. idf-sublattice-v4). "
                   "Without it, a new flow gets the default model's architecture.")
@click.option("--mixture-components", type=click.IntRange(1, 8), default=None,
              help="Logistics per mixture (default: the architecture's; a single-logistic --init-from "
                   "model becomes a mixture, starting at its own likelihood).")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True,
              help="torch threads for training.")
def pretrain_command(data, family, output, steps, tile_size, crops_per_image, batch_size, learning_rate, hidden,
                     init_from, mixture_components, threads) -> None:
    """Train a base model on DATA (a folder of images, or an N x H x W x C uint8 .npy of tiles).

    Float training with quantisation-aware rounding, exported for the exact
    engine.  Checkpoints go to OUTPUT.run/ as it trains; run the same command
    again to resume.  Use the model with OSOA_ZIP_MODELS=<its folder> osoa-zip
    compress --model <name>.
    """
    with _reported_errors():
        import torch

        from .models.pretrain import PretrainSettings, pretrain
        torch.set_num_threads(threads)
        settings = PretrainSettings(family=family, steps=steps, tile_size=tile_size, crops_per_image=crops_per_image,
                                    batch_size=batch_size, learning_rate=learning_rate, hidden=hidden,
                                    mixture_components=mixture_components)
        try:
            digest = pretrain(data, output, settings, init_from, log=lambda m: click.echo(m, err=True))
        except ValueError as error:
            raise UsageError(str(error)) from None
        click.echo(f"{output.with_suffix('.safetensors')}  sha256:{digest}")


@main.command("models")
def models_command() -> None:
    """List the installed models (the default is marked with *)."""
    with _reported_errors():
        for name, entry in sorted(available_models().items()):
            mark = "*" if name == DEFAULT_MODEL else " "
            chosen = adaptation_for(name)
            click.echo(f"{mark} {name:24} {entry.get('family', 'flow'):4}  engine {entry.get('engine', 1)}  "
                       f"sha256:{entry['sha256'][:16]}  {entry.get('parameters', '?'):>8} params  "
                       f"lr {chosen.learning_rate:<6g} adapts {chosen.parameters:4}  {entry.get('description', '')}")


@main.command("bench")
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("-o", "--out", "output", type=click.Path(path_type=Path), default=Path("bench-results"),
              show_default=True, help="Folder for results.md, results.csv and the plots.")
@click.option("--limit", type=click.IntRange(1, None), default=None, help="Only the first N images of each folder.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Pretrained model to start from.")
@click.option("--learning-rate", "--lr", type=float, default=None,
              help="As for compress (the model's own by default); fine-tune + store uses the same.")
@click.option("--steps-per-batch", type=click.IntRange(1, 100), default=AdaptationConfig.steps_per_batch,
              show_default=True, help="As for compress; fine-tune + store takes as many.")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=AdaptationConfig.batch_size, show_default=True,
              help="As for compress.")
@click.option("--tile-size", type=click.IntRange(2, 512), default=AdaptationConfig.tile_size, show_default=True,
              help="As for compress (even).")
@click.option("--fast-baselines", is_flag=True, help="WebP lossless at method 4 instead of 6 (much faster).")
@click.option("--scaling", default="", metavar="N,N,...",
              help="Also time osoa-zip on these numbers of tiles cut from the first folder (e.g. 100,1000,10000).")
@click.option("--no-plots", is_flag=True, help="Do not draw PNG plots (they need matplotlib).")
def bench_command(folders, output, limit, model, learning_rate, steps_per_batch, batch_size, tile_size,
                  fast_baselines, scaling, no_plots) -> None:
    """Compare osoa-zip with --no-adapt, fine-tune + store, PNG, WebP, JPEG XL and tar+xz on FOLDERS.

    Prints a markdown table (bits per sub-pixel, sizes relative to osoa-zip,
    seconds, MB/s, peak memory) and writes it with a CSV and plots to --out.
    """
    import shlex

    from .bench import BenchError
    from .bench.results import BenchOptions
    from .bench.runner import run_bench
    with _reported_errors():
        try:
            counts = [int(item) for item in scaling.split(",") if item.strip()]
        except ValueError:
            raise UsageError(f"--scaling wants numbers separated by commas, not {scaling!r}") from None
        if any(count < 1 for count in counts):
            raise UsageError("--scaling counts must be positive")
        config = _settings(learning_rate=learning_rate, steps_per_batch=steps_per_batch, batch_size=batch_size,
                           tile_size=tile_size)
        options = BenchOptions(list(folders), output, model, config, limit, fast_baselines, counts, not no_plots,
                               command="osoa-zip " + shlex.join(sys.argv[1:]))
        try:
            result = run_bench(options, lambda message: click.echo(f"bench: {message}", err=True))
        except BenchError as error:
            raise ArchiveError(str(error)) from None
        from .bench.report import markdown
        click.echo(markdown(result), nl=False)
        click.echo(f"bench: wrote {', '.join(str(path) for path in result.outputs)}", err=True)


def _report(summary, verb: str, verbose: bool) -> None:
    line = f"{verb} {summary.files} files ({summary.images} images) in {summary.seconds:.1f}s"
    if summary.image_subpixels:
        line += f"; images at {summary.bits_per_subpixel:.3f} bits per sub-pixel"
    click.echo(line, err=True)
    if verbose:
        for index, batch in enumerate(summary.batches):
            notes = [text for bit, text in FLAG_NOTES if batch.flags & bit]
            click.echo(f"  batch {index}: {batch.bits / batch.subpixels:.3f} bpsp, {batch.seconds:.2f}s"
                       + "".join(f", {note}" for note in notes), err=True)


if __name__ == "__main__":
    from .launcher import run_and_exit
    run_and_exit(main)
