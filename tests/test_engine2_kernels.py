"""Engine 2's exact product: every kernel against an exact integer reference, at its bounds.

This is the test that catches saturation: random and extreme operands (the
first operand at -128/127, the second at -64/63, K deep enough to reach the
float32 kernel's 2**24 partial sums and the int8 kernel's int32 bound), odd
shapes and transposed views, through every kernel, compared with an int64
matrix product.  The same sweep runs in subprocesses under other oneDNN ISAs
and ATen capabilities (a bounded subset here, the full matrix marked slow),
and ``test_sweep_catches_saturation`` shows that it fails when the second
operand's 7-bit bound is broken under ONEDNN_MAX_CPU_ISA=AVX2.
"""
from __future__ import annotations

import itertools
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from osoa_zip.exact import kernels
from osoa_zip.exact.kernels import (
    FLOAT32_CHUNK,
    KERNELS,
    MAX_K,
    FloatSettingsGuard,
    KernelError,
    choose_kernel,
    exact_product,
    limb_range,
    limbs_needed,
    requantize,
    shift_round,
    split_limbs,
)

TESTS = Path(__file__).resolve().parent
FULL = (-128, 127)
SEVEN_BITS = (-64, 63)
X86 = platform.machine().lower() in ("x86_64", "amd64")


def _operand(shape, low, high, mode, generator):
    """An integer tensor in [low, high]: uniform, only the two extremes, or all one extreme."""
    if mode == "random":
        return torch.randint(low, high + 1, shape, generator=generator)
    if mode == "extreme":
        return torch.where(torch.rand(shape, generator=generator) < 0.5, low, high)
    return torch.full(shape, low if mode == "low" else high, dtype=torch.int64)


# (M, K, N): odd shapes from 1 x 1 x 1, a conv's 8192 x 432 x 48 scaled down, a one-row product
# (the bias gradient's ones row), K across the float32 kernel's chunk boundary, and K at the
# int8 kernel's int32 bound; 30 and 9 columns (v7's last convs), which the int8 kernel pads to 32 and 16,
# and 18, 36 and 60 columns, which it pads to 32, 48 and 64 for a strided result (kernels.int8_columns).
SWEEP_SHAPES = [(1, 1, 1), (1, 7, 1), (3, 5, 2), (17, 33, 5), (64, 432, 48), (257, 300, 129), (1, 5000, 96),
                (40, 432, 30), (33, 100, 9), (40, 432, 18), (21, 300, 36), (19, 432, 60),
                (5, FLOAT32_CHUNK, 3), (5, FLOAT32_CHUNK + 1, 3), (7, 4 * FLOAT32_CHUNK + 3, 9), (2, MAX_K, 3)]
SWEEP_MODES = [("random", "random"), ("extreme", "extreme"), ("low", "low"), ("low", "high"), ("high", "low")]


def sweep(seed: int = 0, second=SEVEN_BITS) -> dict[str, int]:
    """Wrong output entries per kernel over SWEEP_SHAPES x SWEEP_MODES (plus transposed views).

    ``second`` is the second operand's range; the engine's bound is SEVEN_BITS.
    Run in subprocesses under other ISAs, so it returns plain counts.
    """
    generator = torch.Generator().manual_seed(seed)
    wrong = {name: 0 for name in KERNELS}
    for (rows, depth, columns), (mode_a, mode_b) in itertools.product(SWEEP_SHAPES, SWEEP_MODES):
        a = _operand((rows, depth), *FULL, mode_a, generator)
        b = _operand((depth, columns), *second, mode_b, generator)
        expected = torch.mm(a, b)
        a8, b8 = a.to(torch.int8), b.to(torch.int8)
        views = [(a8, b8)]
        if rows * columns > 1:  # the same product from transposed storage (the weight gradient's layout)
            views.append((a8.T.contiguous().T, b8.T.contiguous().T))
        for name, kernel in KERNELS.items():
            for (left, right), contiguous in itertools.product(views, (True, False)):
                wrong[name] += int((kernel.limb_product(left, right, contiguous).long() != expected).sum())
    return wrong


def _run_sweep(environment: dict, second=SEVEN_BITS) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")}
    env.update({k: v for k, v in environment.items() if v is not None}, OMP_NUM_THREADS="1")
    code = (f"import json, sys; sys.path.insert(0, {str(TESTS)!r}); "
            f"from test_engine2_kernels import sweep; print(json.dumps(sweep(1, {tuple(second)!r})))")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_sweep_in_process_is_exact():
    assert sweep(0) == {name: 0 for name in KERNELS}


ISAS = ["SSE41", "AVX2", "AVX512_CORE", None]
CAPABILITIES = ["default", "avx2"]
# AVX512_CORE is here because it found a bug: wrong int8 sums for one-column products (kernels.INT8_MIN_COLUMNS).
BOUNDED = [("AVX2", "avx2"), ("SSE41", "default"), ("AVX512_CORE", "default")]


@pytest.mark.parametrize("isa,capability", BOUNDED)
def test_sweep_exact_under_older_isa(isa, capability):
    assert _run_sweep({"ONEDNN_MAX_CPU_ISA": isa, "ATEN_CPU_CAPABILITY": capability}) == \
        {name: 0 for name in KERNELS}


@pytest.mark.slow
@pytest.mark.parametrize("isa,capability", [c for c in itertools.product(ISAS, CAPABILITIES) if c not in BOUNDED])
def test_sweep_exact_full_matrix(isa, capability):
    assert _run_sweep({"ONEDNN_MAX_CPU_ISA": isa, "ATEN_CPU_CAPABILITY": capability}) == \
        {name: 0 for name in KERNELS}


@pytest.mark.skipif(not X86, reason="the saturating u8 x s8 pair sums are an x86 (oneDNN AVX2) path")
def test_sweep_catches_saturation():
    """A deliberately wrong bound -- a full-range second operand -- gives wrong int8 sums under AVX2.

    The int8 kernel's u8 x s8 pair sums saturate at int16 and the sweep sees it
    (thousands of wrong entries; the float kernels go wrong only at K = MAX_K,
    where full-range sums leave int32).  The same environment with the 7-bit
    bound is exact (test_sweep_exact_under_older_isa): the bound is what
    makes int8 exact, which is why the engine keeps the second operand in 7 bits.
    """
    wrong = _run_sweep({"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}, second=FULL)
    assert wrong["int8"] > 100 * max(wrong["float64"], 1)


# -- in-process properties -----------------------------------------------------

MODES = st.sampled_from(["random", "extreme", "low", "high"])


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 200), depth=st.integers(1, 300), columns=st.integers(1, 200),
       mode_a=MODES, mode_b=MODES, a_limbs=st.integers(1, 3), b_limbs=st.integers(1, 3),
       transposed=st.booleans(), seed=st.integers(0, 2 ** 31))
def test_wide_product_exact_on_every_kernel(rows, depth, columns, mode_a, mode_b, a_limbs, b_limbs,
                                            transposed, seed):
    generator = torch.Generator().manual_seed(seed)
    a = _operand((rows, depth), *limb_range(8, a_limbs), mode_a, generator)
    b = _operand((depth, columns), *limb_range(7, b_limbs), mode_b, generator)
    if transposed:
        a, b = a.T.contiguous().T, b.T.contiguous().T
    expected = torch.mm(a, b)
    results = [exact_product(a, a_limbs, b, b_limbs, kernel) for kernel in KERNELS.values()]
    for result in results:
        assert torch.equal(result.long(), expected)
    if a_limbs == b_limbs == 1:
        assert all(result.dtype == torch.int32 for result in results)


@settings(max_examples=10, deadline=None)
@given(depth=st.sampled_from([FLOAT32_CHUNK - 1, FLOAT32_CHUNK, FLOAT32_CHUNK + 1, 3 * FLOAT32_CHUNK + 7,
                              MAX_K + 1]),
       mode_a=MODES, mode_b=MODES, seed=st.integers(0, 2 ** 31))
def test_deep_products_exact(depth, mode_a, mode_b, seed):
    """K across the float32 chunks and beyond MAX_K (where the wide product splits K in int64)."""
    generator = torch.Generator().manual_seed(seed)
    a = _operand((3, depth), *FULL, mode_a, generator)
    b = _operand((depth, 2), *SEVEN_BITS, mode_b, generator)
    for kernel in KERNELS.values():
        assert torch.equal(exact_product(a, 1, b, 1, kernel).long(), torch.mm(a, b))


def test_overlapping_row_views_are_multiplied_correctly():
    """_int_mm misreads a view whose rows overlap (row stride < K); the kernels copy such operands."""
    storage = torch.arange(-60, 60, dtype=torch.int8)
    a = storage.as_strided((5, 9), (3, 1))  # row i is storage[3i : 3i + 9]
    b = storage.as_strided((9, 4), (2, 1))
    for kernel in KERNELS.values():
        assert torch.equal(kernel.limb_product(a, b).long(), torch.mm(a.long(), b.long()))


def test_limb_product_refuses_too_deep_products():
    a = torch.zeros(1, MAX_K + 1, dtype=torch.int8)
    with pytest.raises(ValueError, match="split K"):
        KERNELS["float64"].limb_product(a, a.T)


@given(width=st.sampled_from([7, 8]), count=st.integers(1, 4), data=st.data())
def test_limbs_recombine_exactly(width, count, data):
    low, high = limb_range(width, count)
    values = data.draw(st.lists(st.integers(low, high), min_size=1, max_size=50))
    x = torch.tensor(values + [low, high])
    limbs = split_limbs(x, width, count)
    assert all(limb.dtype == torch.int8 for limb in limbs)
    assert all(-(1 << (width - 1)) <= int(v) < (1 << (width - 1)) for limb in limbs for v in limb)
    assert torch.equal(sum(limb.long() << (width * i) for i, limb in enumerate(limbs)), x)


def test_limb_ranges():
    assert limb_range(8, 1) == FULL and limb_range(7, 1) == SEVEN_BITS
    assert limb_range(8, 2) == (-32896, 32639) and limb_range(7, 2) == (-8256, 8127)
    assert limbs_needed(-8000, 8000, 7) == 2 and limbs_needed(-8300, 0, 7) == 3
    assert limbs_needed(-128, 127, 8) == 1 and limbs_needed(-128, 128, 8) == 2


@given(values=st.lists(st.integers(-2 ** 40, 2 ** 40), min_size=1, max_size=30), shift=st.integers(-8, 30))
def test_shift_round_is_round_half_up(values, shift):
    acc = torch.tensor(values)

    def expected(v):  # floor(v / 2**shift + 1/2) in Python integers
        return (2 * v + (1 << shift)) // (1 << (shift + 1)) if shift >= 0 else v << -shift

    want = [expected(v) for v in values]
    assert shift_round(acc, shift).tolist() == want
    assert shift_round(acc, torch.tensor(shift)).tolist() == want


def test_shift_round_ties_and_per_channel_shifts():
    acc = torch.tensor([[-5, -3, -1, 1, 3, 5]] * 3).T  # 6 positions x 3 channels
    shifts = torch.tensor([0, 1, -1])
    out = shift_round(acc, shifts)
    assert out[:, 0].tolist() == [-5, -3, -1, 1, 3, 5]
    assert out[:, 1].tolist() == [-2, -1, 0, 1, 2, 3]  # -2.5 -> -2, -0.5 -> 0, 2.5 -> 3
    assert out[:, 2].tolist() == [-10, -6, -2, 2, 6, 10]
    assert requantize(torch.tensor([-1000, 1000]), 2, -128, 127).tolist() == [-128, 127]


# -- choosing a kernel -----------------------------------------------------------

def test_forced_kernel_and_bad_value(monkeypatch):
    for name in KERNELS:
        assert choose_kernel(name).name == name
    with pytest.raises(KernelError) as caught:
        choose_kernel("int4")
    assert "\n" not in str(caught.value) and "int8, float32, float64" in str(caught.value)
    monkeypatch.setenv("OSOA_ZIP_KERNEL", "fast")
    kernels.reset_kernel_choice()
    try:
        with pytest.raises(KernelError, match="OSOA_ZIP_KERNEL"):
            kernels.current_kernel()
        monkeypatch.setenv("OSOA_ZIP_KERNEL", "float64")
        kernels.reset_kernel_choice()
        assert kernels.current_kernel().name == "float64"
    finally:
        monkeypatch.delenv("OSOA_ZIP_KERNEL")
        kernels.reset_kernel_choice()
    assert choose_kernel(None).name in KERNELS


def test_kernel_error_is_a_usage_error():
    """cli.py reports a UsageError as one line with exit code 2; a KernelError is one."""
    from osoa_zip.layout import UsageError
    assert issubclass(KernelError, UsageError)


def test_float32_refused_under_reduced_fpmath_mode(monkeypatch):
    monkeypatch.setenv("ONEDNN_DEFAULT_FPMATH_MODE", "BF16")
    with pytest.raises(KernelError, match="ONEDNN_DEFAULT_FPMATH_MODE=BF16"):
        choose_kernel("float32")
    assert choose_kernel(None).name in ("int8", "float64")  # never float32 under BF16
    monkeypatch.setenv("ONEDNN_DEFAULT_FPMATH_MODE", "strict")
    assert choose_kernel("float32").name == "float32"


@pytest.mark.parametrize("precision", ["bf16", "tf32"])
def test_float32_kernel_pins_ieee_products(precision):
    getter, setter = torch._C._get_fp32_precision_getter, torch._C._set_fp32_precision_setter
    before = getter("mkldnn", "matmul")
    setter("mkldnn", "matmul", precision)
    try:
        seen = []
        real_mm = torch.mm

        def spying_mm(x, y):
            seen.append(getter("mkldnn", "matmul"))
            return real_mm(x, y)

        generator = torch.Generator().manual_seed(3)
        a = _operand((40, 3000), *FULL, "extreme", generator)
        b = _operand((3000, 30), *SEVEN_BITS, "extreme", generator)
        torch.mm = spying_mm
        try:
            got = KERNELS["float32"].limb_product(a.to(torch.int8), b.to(torch.int8))
        finally:
            torch.mm = real_mm
        assert seen and set(seen) == {"ieee"}
        assert torch.equal(got.long(), torch.mm(a, b))
        assert getter("mkldnn", "matmul") == precision  # restored
    finally:
        setter("mkldnn", "matmul", before)
    with FloatSettingsGuard():
        assert getter("mkldnn", "matmul") in ("ieee", "none")
