"""Steps on every Nth tile of a batch: a format change prototyped and measured before it is built.

  python benchmarks/step_tiles.py FOLDER [--step 2] [--min-tiles 2] [--pairs 4] [--option "-T 1"]

The lever "steps on half the tiles" (docs/PERFORMANCE.md, "Where a batch's CPU goes") needs a
new adaptation setting in a new format minor version: the decoder must replay which tiles
step, and the stream must say in what order the tiles' factors come.  This script measures
what it would give with the order a two-process build would want, before anything is built.

It runs the command line in child processes (this file with ``--child N``) in which
``SubLatticeFlow``'s passes are patched: every pass over a batch of two tiles or more goes,
part by part of ``parts()`` (coarsest first), over S = tiles[::N] with its graph and then over
the rest R without, so the step's loss is S's (R's terms add a constant to the loss: the
guard still compares the whole batch's bits) and the stream holds S_first, R_first, S_second,
R_second; a batch of fewer than ``--min-tiles`` tiles is coded whole, as now (a rule a format
could state beside N).  The worker, forked from the patched child, is patched too: it codes or decodes both
subsets' first parts and the command both second parts, with no extra message.  decompress
starts no worker of its own before the model load (that one would not be patched); it forks one
after the load.  N = 1 is the engine as it is, with decompress's worker forked the same way.

The archives are not archives any release reads (their header does not say N): they are
written to a temporary folder, decoded by the same patched code, compared file by file with the
input (bytes, or for an image whose bytes differ its pixels) and deleted.  Prints the archive
sizes and, over interleaved pairs, each command's wall and CPU time (the child's and its
children's) as the ratio N over 1.
"""
from __future__ import annotations

import argparse
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _patch(step: int, min_tiles: int) -> None:
    """Every pass of SubLatticeFlow over >= min_tiles tiles: per part, S = tiles[::step] then the
    rest (step 1: the passes as they are); decompress forks its worker after the model load."""
    import torch

    from osoa_zip import unpack
    from osoa_zip.models.idf import SubLatticeFlow as Flow

    analyse_part, decode_part = Flow.analyse_part, Flow.decode_part
    whole_analyse, whole_decode_with_loss, whole_decode = Flow.analyse, Flow.decode_with_loss, Flow.decode

    def stepping(count: int) -> torch.Tensor:
        keep = torch.zeros(count, dtype=torch.bool)
        keep[::step] = True
        return keep

    def split_analyse_part(self, pixels, levels, with_loss=True):
        if len(pixels) < min_tiles:
            return analyse_part(self, pixels, levels, with_loss)
        keep = stepping(len(pixels))
        terms, factors = analyse_part(self, pixels[keep], levels, with_loss)
        with torch.no_grad():
            rest_terms, rest_factors = analyse_part(self, pixels[~keep], levels, with_loss)
        return terms + rest_terms, factors + rest_factors

    def split_analyse(self, pixels, with_loss=True):
        if len(pixels) < min_tiles:
            return whole_analyse(self, pixels, with_loss)
        terms, factors = [], []
        for part in self.parts(*pixels.shape[2:]):
            part_terms, part_factors = split_analyse_part(self, pixels, part, with_loss)
            terms, factors = terms + part_terms, factors + part_factors
        return (torch.stack(terms).sum() if with_loss else None), factors

    def split_decode_part(self, decoder, shape, levels, y=None, with_loss=True):
        count, channels, height, width = shape
        if count < min_tiles:
            return decode_part(self, decoder, shape, levels, y, with_loss)
        keep = stepping(count)
        steps = int(keep.sum())
        ours, loss = decode_part(self, decoder, (steps, channels, height, width), levels,
                                 None if y is None else y[keep], with_loss)
        rest, _ = decode_part(self, decoder, (count - steps, channels, height, width), levels,
                              None if y is None else y[~keep], False)
        image = torch.empty((count, channels, *ours.shape[2:]), dtype=ours.dtype)
        image[keep], image[~keep] = ours.detach(), rest.detach()
        return image, loss

    def split_decode(self, decoder, shape, with_loss):
        image, losses = None, []
        for part in self.parts(*shape[2:]):
            image, loss = split_decode_part(self, decoder, shape, part, image, with_loss)
            if loss is not None:
                losses.append(loss)
        return image, (torch.stack(losses).sum() if losses else None)

    def split_decode_with_loss(self, decoder, shape, initial=True):
        if shape[0] < min_tiles:
            return whole_decode_with_loss(self, decoder, shape, initial)
        return split_decode(self, decoder, shape, True)

    @torch.no_grad()
    def split_decode_alone(self, decoder, shape, initial=True):
        if shape[0] < min_tiles:
            return whole_decode(self, decoder, shape, initial)
        return split_decode(self, decoder, shape, False)[0]

    unpack._Decoder._start_parts_before_model = lambda self, planned: None
    if step > 1:
        Flow.analyse_part, Flow.analyse, Flow.decode_part = split_analyse_part, split_analyse, split_decode_part
        Flow.decode_with_loss, Flow.decode = split_decode_with_loss, split_decode_alone


def _child(step: int, min_tiles: int, arguments: list[str]) -> None:
    _patch(step, min_tiles)
    from osoa_zip.launcher import run
    sys.argv = ["osoa-zip", *arguments]
    run()


def _run(step: int, min_tiles: int, arguments: list[str]) -> tuple[float, float]:
    """(wall s, CPU s of the child and its children) of one patched command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--child", str(step), str(min_tiles), *arguments], check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _same_tree(source: Path, restored: Path) -> bool:
    from PIL import Image
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        copy = restored / path.relative_to(source)
        if not copy.is_file():
            return False
        if copy.read_bytes() == path.read_bytes():
            continue
        try:
            with Image.open(path) as a, Image.open(copy) as b:
                if a.mode != b.mode or a.size != b.size or a.tobytes() != b.tobytes():
                    return False
        except OSError:
            return False
    return True


def main() -> None:
    if len(sys.argv) > 3 and sys.argv[1] == "--child":
        _child(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--step", type=int, default=2, help="every Nth tile steps (N >= 2)")
    parser.add_argument("--min-tiles", type=int, default=2, help="batches of fewer tiles are coded whole")
    parser.add_argument("--pairs", type=int, default=4, help="interleaved pairs of each command")
    parser.add_argument("--option", default="", help='options for both commands, e.g. "-T 1"')
    args = parser.parse_args()
    if args.step < 2 or args.min_tiles < 2:
        parser.error("--step and --min-tiles must be at least 2 (step 1 is the reference)")
    folder, options = Path(args.folder), shlex.split(args.option)
    work = Path(tempfile.mkdtemp(prefix="step-tiles-"))
    try:
        archives = {step: work / f"n{step}.osoa" for step in (1, args.step)}
        times = {(command, step): [] for command in ("compress", "decompress") for step in archives}
        for pair in range(args.pairs + 1):  # the first pair warms the caches up and is not counted
            for step, archive in archives.items():
                measured = _run(step, args.min_tiles, ["compress", "-q", "-f", *options, str(folder), str(archive)])
                restored = work / f"out{step}"
                shutil.rmtree(restored, ignore_errors=True)
                decoded = _run(step, args.min_tiles, ["decompress", "-q", "-f", *options, str(archive), str(restored)])
                if not _same_tree(folder, restored):
                    sys.exit(f"step_tiles: N={step}: the restored tree differs from the input")
                if pair:
                    times["compress", step].append(measured)
                    times["decompress", step].append(decoded)
        sizes = {step: archive.stat().st_size for step, archive in archives.items()}
        print(f"{folder.name}: N=1 {sizes[1]} bytes, N={args.step} (batches of {args.min_tiles}+ tiles) "
              f"{sizes[args.step]} bytes "
              f"({100 * (sizes[args.step] / sizes[1] - 1):+.3f}%); every round trip exact")
        print(f"| command | N=1 wall s | N={args.step} wall s | wall ratio (median, range) | CPU ratio (median) |")
        print("|---|---:|---:|---:|---:|")
        for command in ("compress", "decompress"):
            ones, steps = times[command, 1], times[command, args.step]
            walls = [b[0] / a[0] for a, b in zip(ones, steps)]
            cpus = [b[1] / a[1] for a, b in zip(ones, steps)]
            print(f"| {(command + ' ' + ' '.join(options)).strip()} | {statistics.median(a[0] for a in ones):.2f} | "
                  f"{statistics.median(b[0] for b in steps):.2f} | {statistics.median(walls):.3f} "
                  f"({min(walls):.3f}–{max(walls):.3f}) | {statistics.median(cpus):.3f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
