"""Engine 2's limb product on every memory layout an operand can have, against an exact integer reference.

test_engine2_kernels.py sweeps values and shapes on plain and transposed
storage.  This file sweeps the *layout*: views at odd storage offsets (not
64-byte aligned), rows padded beyond the matrix, transposed storage, and
dimensions of size 1 with every stride torch allows for them.  The last
ones found a torch 2.13 bug: ``_int_mm`` of a matrix with a size-1
dimension whose stride is not the row-major one (a 1 x K view with strides
(1, 1), as ``x.view(K, 1).T`` gives) returns unwritten memory, different on
every call -- the kind of fault that makes a replay fail once in a while.
``kernels._matrix_layout`` copies such operands; without it each sweep below
sees about 360 wrong int8 products (361, 361 and 362 in one run: the garbage
differs), in-process and under SSE41 and AVX512_CORE.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from osoa_zip.exact.kernels import KERNELS

TESTS = Path(__file__).resolve().parent

# (M, K, N) with dimensions of size 1 (a bias gradient's ones row, a weight gradient over one
# position, a one-column product) and a few of the engine's shapes beside them.
DEGENERATE_SHAPES = [(1, 1, 1), (1, 1, 2), (1, 7, 2), (1, 64, 16), (5, 1, 2), (5, 1, 16), (1, 1, 16),
                     (36, 1, 16), (1, 200, 1), (4, 9, 1), (2, 3, 2)]
# Shapes of the engine's products (forward, weight and bias gradients of 16x16 tiles and
# their levels) and odd ones, for the offset / padding / transposition sweep.
ENGINE_SHAPES = [(1, 256, 36), (3, 27, 48), (64, 432, 48), (256, 432, 60), (432, 64, 32), (27, 256, 18),
                 (1024, 27, 48), (33, 17, 2), (7, 4096, 13)]
FULL, SEVEN_BITS = (-128, 127), (-64, 63)


def _strided_copies(values: torch.Tensor) -> list[torch.Tensor]:
    """int8 views holding ``values`` (r x c) with every stride pair that describes r x c distinct
    elements: row- and column-major, padded, and any stride on a dimension of size 1."""
    rows, columns = values.shape
    candidates = {(columns, 1), (1, rows), (1, 1), (columns + 3, 1), (1, rows + 3), (5, 1), (1, 5), (0, 1), (1, 0)}
    views = []
    for row_stride, column_stride in sorted(candidates):
        if rows > 1 and columns > 1 and not ((column_stride == 1 and row_stride >= columns)
                                             or (row_stride == 1 and column_stride >= rows)):
            continue  # overlapping rows: test_engine2_kernels covers those
        if (row_stride == 0 and rows > 1) or (column_stride == 0 and columns > 1):
            continue
        size = (rows - 1) * row_stride + (columns - 1) * column_stride + 1
        view = torch.zeros(size + 8, dtype=torch.int8).as_strided((rows, columns), (row_stride, column_stride))
        views.append(view.copy_(values))
    return views


def _placed(values: torch.Tensor, offset: int, padding: int, transposed: bool) -> torch.Tensor:
    """An int8 view of ``values`` ``offset`` bytes into its storage, rows ``padding`` longer than
    the matrix, in row-major or (``transposed``) column-major order."""
    stored = values.T if transposed else values
    rows, columns = stored.shape
    storage = torch.zeros(offset + rows * (columns + padding) + 64, dtype=torch.int8)
    view = storage[offset:offset + rows * (columns + padding)].view(rows, columns + padding)[:, :columns]
    view.copy_(stored)
    return view.T if transposed else view


def _operands(shape, generator, extreme: bool) -> tuple[torch.Tensor, torch.Tensor]:
    rows, depth, columns = shape
    if extreme:
        a = torch.where(torch.rand(rows, depth, generator=generator) < 0.5, *FULL)
        b = torch.where(torch.rand(depth, columns, generator=generator) < 0.5, *SEVEN_BITS)
    else:
        a = torch.randint(FULL[0], FULL[1] + 1, (rows, depth), generator=generator)
        b = torch.randint(SEVEN_BITS[0], SEVEN_BITS[1] + 1, (depth, columns), generator=generator)
    return a, b


def layout_sweep(seed: int = 0) -> dict[str, int]:
    """Wrong products per kernel (a product is wrong if any entry differs from int64's)."""
    generator = torch.Generator().manual_seed(seed)
    wrong = {name: 0 for name in KERNELS}
    for shape, extreme in itertools.product(DEGENERATE_SHAPES, (False, True)):
        a, b = _operands(shape, generator, extreme)
        expected = a @ b
        for left, right in itertools.product(_strided_copies(a), _strided_copies(b)):
            for name, kernel in KERNELS.items():
                wrong[name] += not torch.equal(kernel.limb_product(left, right).long(), expected)
    for shape, offset, padding, transposed in itertools.product(ENGINE_SHAPES, (0, 1, 17, 63), (0, 5),
                                                                itertools.product((False, True), repeat=2)):
        a, b = _operands(shape, generator, extreme=offset % 2 == 1)
        expected = a @ b
        left = _placed(a, offset, padding, transposed[0])
        right = _placed(b, (7 * offset) % 64, padding, transposed[1])
        for name, kernel in KERNELS.items():
            wrong[name] += not torch.equal(kernel.limb_product(left, right).long(), expected)
    return wrong


def test_every_layout_exact_in_process():
    assert layout_sweep(0) == {name: 0 for name in KERNELS}


def _sweep_under(environment: dict) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")}
    env.update(environment, OMP_NUM_THREADS="1")
    code = (f"import json, sys; sys.path.insert(0, {str(TESTS)!r}); "
            f"from test_engine2_layouts import layout_sweep; print(json.dumps(layout_sweep(1)))")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# SSE41 is the ISA of the portability flake (issue #15); AVX512_CORE has no VNNI either.
@pytest.mark.parametrize("isa", ["SSE41", "AVX512_CORE"])
def test_every_layout_exact_under_older_isa(isa):
    assert _sweep_under({"ONEDNN_MAX_CPU_ISA": isa, "ATEN_CPU_CAPABILITY": "avx512" if isa == "SSE41"
                         else "default"}) == {name: 0 for name in KERNELS}
