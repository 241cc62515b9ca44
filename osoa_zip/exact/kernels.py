"""Engine 2's exact integer matrix product: one contract, three kernels.

Why: engine 1 keeps every reduction exact by doing it in float64 on bounded
dyadic grids, which costs ~4x plain float32.  Engine 2 does the same with
small integers, so it can use int8 hardware.  Integer hardware is not
automatically exact, though: oneDNN's int8 GEMM on CPUs without VNNI turns
the first operand into u8 (a + 128, with a compensation term) and adds
*pairs* of u8 x s8 products in int16 (``vpmaddubsw``), which saturates for
full-range operands.  The contract below is the one that was measured exact
on every oneDNN ISA (docs/ENGINE2.md, /work/shared/CPUS.md):

* ``limb_product(a, b)``: ``a`` is M x K int8 in [-128, 127] (a *full limb*),
  ``b`` is K x N int8 in [-64, 63] (a *7-bit limb*), K <= MAX_K; the result
  is the M x N integer product as int32, identical on every kernel.
* Wider integers are split into limbs (``split_limbs``): a first operand into
  8-bit limbs, a second operand into 7-bit limbs; every pair of limbs is one
  limb product, recombined exactly in int64 (``exact_product``).

The three kernels and the bound each relies on:

* ``int8``: ``torch._int_mm`` (int8 x int8 -> int32).  One u8 x s7 pair sums to
  at most 2 * 255 * 64 = 32640 < 2**15 - 1, so the int16 pair sums of the
  non-VNNI path cannot saturate; the u8 sum before compensation is at most
  K * 255 * 64 < 2**31 for K <= MAX_K = 2**17, so int32 cannot wrap either.
  Two layouts _int_mm gets wrong are avoided: a one-column second operand
  under AVX512_CORE (padded to two columns, INT8_MIN_COLUMNS) and views whose
  rows overlap (copied, ``_matrix_layout``).
* ``float32``: every product is an integer of magnitude <= 128 * 64 = 2**13,
  so every partial sum of at most FLOAT32_CHUNK = 2**11 products is an integer
  of magnitude <= 2**24, which float32 holds exactly -- in any summation
  order, blocking or FMA use.  K is cut into such chunks, each chunk's result
  converted to int32 and the chunks summed there.  It also needs torch to
  keep float32 products in float32 (no bf16/tf32 shortcut): see
  ``FloatSettingsGuard``.
* ``float64``: the reference; sums of at most MAX_K products of 2**13 stay
  below 2**30, far inside float64's 2**53.

All three return the same integers, so which one runs is never written into
an archive; ``current_kernel`` picks the fastest usable one for this process
(``OSOA_ZIP_KERNEL`` forces one).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..layout import UsageError
from .grid import KERNEL_ENVIRONMENT, KERNEL_NAMES, requested_kernel

FULL_LIMB_BITS = 8  # first-operand limbs: int8, [-128, 127]
SEVEN_BIT_LIMB_BITS = 7  # second-operand limbs: [-64, 63]
LIMB_PRODUCT_MAX = 2 ** (FULL_LIMB_BITS - 1) * 2 ** (SEVEN_BIT_LIMB_BITS - 1)  # |a * b| <= 2**13
# int8 kernel: K * 255 * 64 < 2**31 (oneDNN's u8 sum before its compensation term).
MAX_K = 2 ** 17
# float32 kernel: FLOAT32_CHUNK * LIMB_PRODUCT_MAX = 2**24, the largest exact float32 integer run.
FLOAT32_CHUNK = 2 ** 24 // LIMB_PRODUCT_MAX
# int8 kernel: with ONEDNN_MAX_CPU_ISA=AVX512_CORE (AVX-512 without VNNI), torch 2.13's _int_mm
# returns wrong sums for N = 1 (a matrix-vector product), even inside the 7-bit bound (measured:
# every M in 1..64 and most K); N >= 2 was exact.  A one-column second operand is padded with zeros.
INT8_MIN_COLUMNS = 2
# int8 kernel, speed only: oneDNN's int8 GEMM (torch 2.13, one thread) handles a column count
# just short of a multiple of 16 slowly: 8192 x 432 by 432 x 30 took 1.27 ms, by 432 x 32 0.75 ms
# (the centres' last conv, 30 outputs on v7's RGB network), 432 x 9 0.79 ms against 432 x 16
# 0.60 ms (the grey centres).  Such a second operand is padded with zero columns up to the
# multiple of INT8_COLUMN_BLOCK, which adds whole zero columns to the result and changes none
# of the others.  Most of what padding 18, 36 or 60 columns saved went into copying the kept
# columns out of the wider result (32768 x 432 by 432 x 18: 3.14 ms, padded to 32 columns 2.53 ms,
# 3.21 ms with the copy), so those are padded only for a caller that takes the result as a
# strided view (``limb_product(..., contiguous=False)``: the limb recombination writes a new
# matrix anyway): every column count under INT8_WIDE_PADDING that is not a multiple of 16.
INT8_COLUMN_BLOCK = 16
INT8_WIDE_PADDING = 64


class KernelError(UsageError):
    """An exact kernel was asked for that this process cannot run exactly (a one-line message)."""


# -- limbs -------------------------------------------------------------------

def limb_range(width: int, count: int) -> tuple[int, int]:
    """The integers that ``count`` balanced limbs of ``width`` bits represent: [low, high].

    Limb i (weight 2**(width * i)) lies in [-2**(width-1), 2**(width-1) - 1], so
    the range is [-h * R, (h - 1) * R] with h = 2**(width-1) and
    R = 1 + 2**width + ... + 2**(width * (count-1)).  One limb: the limb's own
    range; two 8-bit limbs: [-32896, 32639]; two 7-bit limbs: [-8256, 8127].
    """
    half = 1 << (width - 1)
    repeat = sum(1 << (width * i) for i in range(count))
    return -half * repeat, (half - 1) * repeat


def limbs_needed(low: int, high: int, width: int) -> int:
    """The fewest balanced limbs of ``width`` bits that represent every integer in [low, high]."""
    count = 1
    while not (limb_range(width, count)[0] <= low and high <= limb_range(width, count)[1]):
        count += 1
    return count


def split_limbs(x: torch.Tensor, width: int, count: int, out: list[torch.Tensor] | None = None
                ) -> list[torch.Tensor]:
    """Balanced limbs of an integer tensor, lowest first, each int8 in [-2**(width-1), 2**(width-1) - 1].

    With t = x + 2**(width-1): low = (t mod 2**width) - 2**(width-1) is x's residue
    nearest zero (ties to the negative one), and high = t >> width (an
    arithmetic shift floors), so x == low + (high << width) exactly.  Repeated on
    high for more limbs.  The caller keeps x inside ``limb_range(width, count)``;
    then the last quotient is a limb too.  ``out``: int8 tensors (views) to write
    the limbs into.
    """
    out = out or [None] * count
    if count == 1:
        return [out[0].copy_(x) if out[0] is not None else x.to(torch.int8)]
    half, mask = 1 << (width - 1), (1 << width) - 1
    rest = x.to(torch.int32) if x.dtype in (torch.int8, torch.int16) else x
    limbs = []
    for index in range(count):
        if index == count - 1:
            limbs.append(out[index].copy_(rest) if out[index] is not None else rest.to(torch.int8))
            break
        shifted = rest + half
        residue = shifted & mask
        if out[index] is not None:
            limbs.append(torch.sub(residue, half, out=out[index]))
        else:
            limbs.append(residue.sub_(half).to(torch.int8))
        rest = shifted.bitwise_right_shift_(width)
    return limbs


# -- the kernels -------------------------------------------------------------

class FloatSettingsGuard:
    """Within: torch's float32 products are IEEE float32 (no bf16/tf32 shortcut).

    ``torch.set_float32_matmul_precision('medium'/'high')`` and
    ``torch.backends.mkldnn.matmul.fp32_precision = 'bf16'/'tf32'`` let oneDNN
    compute float32 products in bf16 or tf32 on CPUs that have them, which
    rounds our integers.  They are in-process settings, so the guard pins the
    oneDNN matmul precision to 'ieee' for the duration of a product and
    restores it.  ``ONEDNN_DEFAULT_FPMATH_MODE`` is read by oneDNN once per
    process and cannot be pinned: ``environment_problem`` refuses it instead.
    """

    __slots__ = ("previous",)

    def __enter__(self) -> None:
        self.previous = torch._C._get_fp32_precision_getter("mkldnn", "matmul")
        if self.previous not in ("ieee", "none"):
            torch._C._set_fp32_precision_setter("mkldnn", "matmul", "ieee")
        else:
            self.previous = None

    def __exit__(self, *exception) -> None:
        if self.previous is not None:
            torch._C._set_fp32_precision_setter("mkldnn", "matmul", self.previous)

    @staticmethod
    def environment_problem() -> str | None:
        mode = os.environ.get("ONEDNN_DEFAULT_FPMATH_MODE", "").strip().upper()
        if mode in ("", "STRICT"):
            return None
        return (f"ONEDNN_DEFAULT_FPMATH_MODE={mode} lets oneDNN round float32 products; "
                f"the float32 kernel needs it unset or STRICT")


@dataclass(frozen=True)
class Kernel:
    """One implementation of ``limb_product``; all give identical integers."""

    name: str

    @property
    def operand_dtype(self) -> torch.dtype:
        """The dtype this kernel multiplies in: a caller that copies an operand anyway (im2col)
        can write it in this dtype, holding the same integers, and save the kernel's conversion."""
        return {"int8": torch.int8, "float32": torch.float32}.get(self.name, torch.float64)

    def limb_product(self, a: torch.Tensor, b: torch.Tensor, contiguous: bool = True) -> torch.Tensor:
        """M x K full limbs times K x N 7-bit limbs -> M x N int32, exactly; K <= MAX_K.

        The limbs are int8 tensors, or (float kernels) ``operand_dtype`` tensors of the same integers.
        Without ``contiguous`` the result may be a view of the first N columns of a wider matrix
        (the caller reads it, or copies it into a new matrix, but never needs its rows packed)."""
        if a.shape[1] > MAX_K:
            raise ValueError(f"limb product over K={a.shape[1]} > {MAX_K} (split K first)")
        a, b = _matrix_layout(a), _matrix_layout(b)
        if self.name == "int8":
            columns = b.shape[1]
            wide = int8_columns(columns, strided=not contiguous and a.shape[0] > 1)
            if wide != columns:  # zero columns: see INT8_MIN_COLUMNS and INT8_COLUMN_BLOCK
                padded = torch.zeros(b.shape[0], wide, dtype=torch.int8)
                padded[:, :columns] = b
                kept = torch._int_mm(a, padded)[:, :columns]
                return kept.contiguous() if contiguous else kept
            return torch._int_mm(a, b)
        if self.name == "float64":
            return torch.mm(a.double(), b.double()).to(torch.int32)
        return _float32_product(a, b)

    def environment_problem(self) -> str | None:
        """Why this process cannot run the kernel exactly, or None."""
        if self.name == "float32":
            return FloatSettingsGuard.environment_problem()
        return None


def int8_columns(columns: int, strided: bool = False) -> int:
    """How many columns the int8 kernel gives ``_int_mm`` for a second operand of ``columns``.

    One column is padded to INT8_MIN_COLUMNS (exactness); fewer than two blocks of
    INT8_COLUMN_BLOCK with a remainder above half a block are padded to the next block
    (speed); with ``strided`` (the result may stay a view of the wider product, no copy
    of the kept columns) every count under INT8_WIDE_PADDING that is not a whole number
    of blocks is.  The extra columns are zeros, so the columns kept are the same integers."""
    if columns == 1:
        return INT8_MIN_COLUMNS
    remainder = columns % INT8_COLUMN_BLOCK
    if not remainder:
        return columns
    if (strided and columns < INT8_WIDE_PADDING) or (columns < 2 * INT8_COLUMN_BLOCK
                                                      and remainder > INT8_COLUMN_BLOCK // 2):
        return columns - remainder + INT8_COLUMN_BLOCK
    return columns


def _matrix_layout(m: torch.Tensor) -> torch.Tensor:
    """m itself if it is a plain row- or column-major matrix view, else a row-major copy.

    torch._int_mm silently returns wrong sums for views whose rows overlap
    (e.g. a 2 x 9 view with strides (3, 1), which a reshape of a strided
    im2col view can produce), and *unwritten memory* -- different on every
    call -- when a dimension of size 1 has a stride other than the row-major
    one (e.g. a 1 x K view with strides (1, 1), as ``x.view(K, 1).T`` gives):
    torch counts such a view as contiguous, but _int_mm reads its leading
    dimension from that stride.  Measured with torch 2.13 under every
    ONEDNN_MAX_CPU_ISA.  So a matrix with a dimension of size 1 passes only
    with exactly the row-major strides (columns, 1), and the copy is made
    with those strides (``contiguous()`` would return such a view unchanged).
    """
    rows, columns = m.shape
    row_stride, column_stride = m.stride()
    if rows == 1 or columns == 1:
        if (row_stride, column_stride) == (columns, 1):
            return m
    elif column_stride == 1 and row_stride >= columns:
        return m
    elif row_stride == 1 and column_stride >= rows:
        return m
    return torch.empty(rows, columns, dtype=m.dtype).copy_(m)


def _float32_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """K in chunks of FLOAT32_CHUNK: each chunk's partial sums are integers <= 2**24 (exact)."""
    a, b = a.float(), b.float()
    depth = a.shape[1]
    with FloatSettingsGuard():
        if depth <= FLOAT32_CHUNK:
            return torch.mm(a, b).to(torch.int32)
        total = None
        for start in range(0, depth, FLOAT32_CHUNK):
            part = torch.mm(a[:, start:start + FLOAT32_CHUNK], b[start:start + FLOAT32_CHUNK]).to(torch.int32)
            total = part if total is None else total.add_(part)  # |total| <= K * 2**13 < 2**31
    return total


KERNELS = {name: Kernel(name) for name in ("int8", "float32", "float64")}
PREFERENCE = KERNEL_NAMES  # fastest first: measured on AMX, VNNI and AVX2 (docs/ENGINE2.md)


# -- the wide product --------------------------------------------------------

def exact_product(a: torch.Tensor, a_limbs: int, b: torch.Tensor, b_limbs: int,
                  kernel: Kernel | None = None) -> torch.Tensor:
    """The exact integer product of integer matrices a (M x K) and b (K x N).

    ``a`` must lie in ``limb_range(8, a_limbs)`` and ``b`` in ``limb_range(7, b_limbs)``.
    Returns int32 when K * max|a| * max|b| over those ranges is below 2**31 (one
    limb each side: K < 2**18), else int64 (the caller keeps it below 2**63).
    """
    a_stack = torch.cat(split_limbs(a, FULL_LIMB_BITS, a_limbs)) if a_limbs > 1 else a.to(torch.int8)
    b_stack = torch.cat(split_limbs(b, SEVEN_BIT_LIMB_BITS, b_limbs), dim=1) if b_limbs > 1 else b.to(torch.int8)
    return stacked_product(a_stack, a_limbs, b_stack, b_limbs, kernel)


def stacked_product(a_stack: torch.Tensor, a_limbs: int, b_stack: torch.Tensor, b_limbs: int,
                    kernel: Kernel | None = None, bound: int | None = None,
                    a_width: int = FULL_LIMB_BITS) -> torch.Tensor:
    """``exact_product`` of operands already split: a's limbs stacked down the rows, b's across the columns.

    (A conv splits its activations before im2col, nine times fewer elements.)
    One limb product computes all a_limbs * b_limbs pairs, and the blocks are
    recombined as sum(P_ij << (8 i + 7 j)).  K beyond MAX_K is cut into limb
    products of depth MAX_K.  ``bound``: the largest |result| the caller's
    operands allow (default: from the limbs' ranges); below 2**31 the result
    and its recombination stay int32, else int64.  ``a_width``: a's limbs are
    ``a_width``-bit balanced limbs (7-bit limbs are int8 too; a gradient split
    once for the second operand serves as a first operand as well).
    """
    kernel = kernel or current_kernel()
    rows, depth = a_stack.shape[0] // a_limbs, a_stack.shape[1]
    columns = b_stack.shape[1] // b_limbs
    if bound is None:
        a_low, a_high = limb_range(a_width, a_limbs)
        b_low, b_high = limb_range(SEVEN_BIT_LIMB_BITS, b_limbs)
        bound = depth * max(-a_low, a_high) * max(-b_low, b_high)
    dtype = torch.int32 if bound < 2 ** 31 else torch.int64
    # One block is returned as a contiguous matrix of its own; limb blocks are recombined into
    # a new one, so their product may stay a strided view (kernels.int8_columns).
    single = a_limbs == 1 and b_limbs == 1
    if depth <= MAX_K:
        products = kernel.limb_product(a_stack, b_stack, contiguous=single and dtype == torch.int32)
    else:
        products = None
        for start in range(0, depth, MAX_K):
            part = kernel.limb_product(a_stack[:, start:start + MAX_K], b_stack[start:start + MAX_K],
                                       contiguous=False).long()
            products = part if products is None else products.add_(part)
    if single:
        return products.to(dtype, memory_format=torch.contiguous_format)
    # sum(P_ij << s_ij) as P_00 + 2**s_01 * P_01 + ...: integer adds with alpha (exact, the
    # caller's bound keeps every partial sum inside ``dtype``; an int32 block is added to an
    # int64 sum in int64).  The first add writes a new contiguous matrix.
    blocks = [(products[i * rows:(i + 1) * rows, j * columns:(j + 1) * columns], a_width * i + SEVEN_BIT_LIMB_BITS * j)
              for i in range(a_limbs) for j in range(b_limbs)]
    first, (second, shift) = blocks[0][0], blocks[1]
    result = torch.add(first if dtype == torch.int32 else first.to(dtype), second, alpha=1 << shift)
    for block, shift in blocks[2:]:
        result.add_(block, alpha=1 << shift)
    return result


# -- requantisation ----------------------------------------------------------

def shift_round(acc: torch.Tensor, shift: int | torch.Tensor) -> torch.Tensor:
    """acc / 2**shift rounded half up (ties toward +infinity), exactly, for shift >= 0.

    (acc + 2**(shift-1)) >> shift: an arithmetic shift floors, so adding half a
    step first rounds to nearest with ties up; -2.5 -> -2, 2.5 -> 3.  One rule
    for every requantisation in engine 2.  ``shift`` may be a tensor that
    broadcasts against ``acc`` (per output channel); a negative shift multiplies
    by 2**-shift (the caller keeps the result inside acc's dtype).
    """
    if isinstance(shift, int):
        if shift > 0:
            return (acc + (1 << (shift - 1))) >> shift
        return acc << -shift if shift < 0 else acc
    shift = shift.to(acc.dtype)
    right = shift.clamp(min=0)
    half = (torch.ones_like(right) << right) >> 1
    if bool((shift >= 0).all()):
        return (acc + half) >> right
    # Where shift < 0: (acc << -shift) + 0 >> 0; elsewhere (acc << 0) + half >> shift.
    return ((acc << (-shift).clamp(min=0)) + half) >> right


def rounding_half(shift: int | torch.Tensor) -> int | torch.Tensor:
    """What shift_round adds before shifting right (0 where shift <= 0), to fold into a bias."""
    if isinstance(shift, int):
        return 1 << (shift - 1) if shift > 0 else 0
    right = shift.clamp(min=0)
    return (torch.ones_like(right) << right) >> 1


def requantize(acc: torch.Tensor, shift: int | torch.Tensor, low: int, high: int) -> torch.Tensor:
    """shift_round, then clamp to the target range [low, high]."""
    return shift_round(acc, shift).clamp_(low, high)


# -- choosing the kernel -----------------------------------------------------

_chosen: Kernel | None = None


def _self_check(kernel: Kernel) -> bool:
    """Does the kernel give the exact integers on extreme operands at its bounds (a few ms)?"""
    generator = torch.Generator().manual_seed(15)
    # A deep product (float32 chunks) and a one-column one (a matrix-vector path).
    for rows, depth, columns in ((37, 4 * FLOAT32_CHUNK + 3, 19), (9, 27, 1)):
        a = torch.where(torch.rand(rows, depth, generator=generator) < 0.5, -128, 127).to(torch.int8)
        b = torch.where(torch.rand(depth, columns, generator=generator) < 0.5, -64, 63).to(torch.int8)
        a[0], b[:, 0] = -128, -64  # one output at the largest positive sum
        try:
            got = kernel.limb_product(a, b)
        except RuntimeError:  # an int8 GEMM this torch build or CPU lacks
            return False
        # The float64 product of these integers is exact (|sums| < 2**27 << 2**53): the reference.
        if not torch.equal(got.double(), torch.mm(a.double(), b.double())):
            return False
    return True


def choose_kernel(requested: str | None = None) -> Kernel:
    """The kernel for this process: ``requested`` (a name) or the first usable one in PREFERENCE.

    A kernel is usable if nothing in the environment makes it inexact and it
    passes a self-check at its bounds.  Since every kernel gives the same
    integers, the choice changes speed only.
    """
    if requested:
        try:
            requested_kernel({KERNEL_ENVIRONMENT: requested})
        except ValueError as error:
            raise KernelError(str(error)) from None
        kernel = KERNELS[requested]
        problem = kernel.environment_problem()
        if problem:
            raise KernelError(f"{KERNEL_ENVIRONMENT}={requested} refused: {problem}")
        if not _self_check(kernel):
            raise KernelError(f"{KERNEL_ENVIRONMENT}={requested} refused: the kernel gave wrong sums "
                              f"in its self-check on this CPU")
        return kernel
    for name in PREFERENCE:
        kernel = KERNELS[name]
        if kernel.environment_problem() is None and _self_check(kernel):
            return kernel
    raise KernelError("no exact kernel passes its self-check on this CPU")  # float64 always should


def current_kernel() -> Kernel:
    """The process's kernel, chosen once (``OSOA_ZIP_KERNEL`` read at the first call)."""
    global _chosen
    if _chosen is None:
        _chosen = choose_kernel(os.environ.get(KERNEL_ENVIRONMENT, "").strip() or None)  # checked there
    return _chosen


def reset_kernel_choice() -> None:
    """Forget the process's choice (tests that change the environment)."""
    global _chosen
    _chosen = None
