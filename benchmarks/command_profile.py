"""Where one osoa-zip command's CPU time goes: the model's coding pass, the integer convolutions, the rest.

  OMP_NUM_THREADS=1 python benchmarks/command_profile.py compress -q -f -T 1 --model NAME FOLDER out.osoa
  OMP_NUM_THREADS=1 python benchmarks/command_profile.py decompress -q -f -T 1 out.osoa OUT/

Runs the command in process under cProfile with a process-CPU-time clock (the
machine is shared: wall time is too noisy) and prints, as a Markdown table,
the inclusive CPU seconds of the pass that codes (`analyse` / `decode`), of
engine 2's integer convolutions inside it and inside the adaptation's backward
pass, of the optimiser and of reading images.  cProfile sees the main thread
only: the guard's frozen pass (the helper thread) lands in "everything else".
cProfile slows Python-heavy parts more than torch kernels: read the shares.
"""
from __future__ import annotations

import cProfile
import pstats
import sys
import time

started = time.process_time()
import osoa_zip.models.registry  # noqa: E402,F401  (torch and the models: start-up, counted apart)
from osoa_zip.cli import main  # noqa: E402

IMPORTS = time.process_time() - started


def _inclusive(stats: dict, file: str, name: str, before_line: int | None = None) -> float:
    return sum(value[3] for key, value in stats.items()
               if key[0].endswith(file) and key[2] == name and (before_line is None or key[1] < before_line))


def main_profile(arguments: list[str]) -> None:
    profile = cProfile.Profile(time.process_time)
    begin = time.process_time()
    profile.enable()
    try:
        main(arguments, standalone_mode=False)
    except SystemExit:
        pass
    profile.disable()
    total = time.process_time() - begin
    stats = pstats.Stats(profile).stats
    from osoa_zip.exact import intlayers
    forward_line = intlayers._IntegerStackFunction.backward.__code__.co_firstlineno
    forward = _inclusive(stats, "exact/intlayers.py", "forward", forward_line)
    backward = _inclusive(stats, "exact/intlayers.py", "backward")
    coding = (_inclusive(stats, "models/idf.py", "analyse") + _inclusive(stats, "models/idf.py", "decode")
              + _inclusive(stats, "models/idf.py", "decode_with_loss"))
    autograd = _inclusive(stats, "", "<method 'run_backward' of 'torch._C._EngineBase' objects>")
    adam = _inclusive(stats, "exact/optim.py", "step")
    reading = _inclusive(stats, "imaging/io.py", "read_image")
    rows = [("the model pass that codes (analyse / decode)", coding),
            ("- integer convs, forward (engine 2)", forward),
            ("- the rest: couplings, logistic mixtures, coder", coding - forward),
            ("adaptation backward (autograd)", autograd),
            ("- integer convs, backward (engine 2)", backward),
            ("- the rest: logistic/mixture gradients, quantisers", autograd - backward),
            ("ExactAdam steps", adam),
            ("reading images", reading),
            ("everything else (container, writing, helper thread)", total - coding - autograd - adam - reading),
            ("of the convs: _int_mm", _inclusive(stats, "", "<built-in method torch._int_mm>")),
            ("of the convs: im2col copies", _inclusive(stats, "exact/intconv.py", "_im2col"))]
    print(f"start-up imports {IMPORTS:.2f} s CPU; the command {total:.2f} s CPU (cProfile on)")
    print("| where | CPU s | share |\n|---|---:|---:|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.2f} | {100 * seconds / max(total, 1e-9):.0f}% |")


if __name__ == "__main__":
    main_profile(sys.argv[1:])
