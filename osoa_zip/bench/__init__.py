"""Benchmarks users can trust: osoa-zip against the baselines, on the same images, in one run.

    osoa-zip bench DIR [DIR ...]        (runner.run_bench; the CLI only parses)

  sets.py        the images of a folder as every codec sees them, and the model's batches
  processes.py   run a codec as a separate process: wall time and peak RSS (os.wait4)
  classical.py   PNG, WebP lossless, JPEG XL lossless, tar + xz (optional ones reported as skipped)
  finetune.py    the paper's baseline: fine-tune the same parameters, store them, code frozen
  results.py     the rows and options of a run (plain data)
  report.py      markdown table, CSV and (with matplotlib) plots
  runner.py      runs everything and collects the rows

Nothing here imports torch at module level except finetune.py, so the
classical codecs' child processes start fast.
"""


class BenchError(RuntimeError):
    """A benchmark cannot run (no images) or a codec failed or did not give the images back."""
