"""Engine 2's cheaper passes against their definitions: the same integers and floats, bit for bit.

Each fused or reordered path here replaced a longer sequence of elementwise operations;
the reference is that sequence, written out, on random and extreme operands."""
from __future__ import annotations

import math

import pytest
import torch

from osoa_zip.exact import fixed, intconv, intlayers, kernels
from osoa_zip.exact.grid import GRAD_BITS
from osoa_zip.models import mixture


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bits (NaN where NaN, -0.0 where -0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        return torch.equal(a.view(torch.int64) if a.dtype == torch.float64 else a,
                           b.view(torch.int64) if b.dtype == torch.float64 else b)
    return torch.equal(a, b)


def _gradient_cases(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, 4, 2, generator=g, dtype=torch.float64)
    x = x * 10.0 ** float(torch.randint(-300, 300, (1,), generator=g))
    kind = seed % 8
    if kind == 1:
        x.zero_()
    elif kind == 2:
        x.view(-1)[3] = math.nan
    elif kind == 3:
        x.view(-1)[2] = math.inf
    elif kind == 4:  # a peak that rounds up to 2**GRAD_BITS steps
        x.view(-1)[0] = math.ldexp(2 ** GRAD_BITS - 0.25, 7)
        x.view(-1)[1] = -math.ldexp(2 ** GRAD_BITS - 0.5, 7)
    elif kind == 5:  # ties, on either side
        x = torch.ldexp(torch.randint(-2 ** 17, 2 ** 17, x.shape, generator=g).double() + 0.5,
                        torch.tensor(-30.0, dtype=torch.float64))
    elif kind == 6:  # tiny: below the smallest gradient exponent
        x = x * 1e-300 * 1e-10
    elif kind == 7:
        x = -x.abs()
    return x


@pytest.mark.parametrize("seed", range(64))
def test_grid_gradient_to_fixed_is_the_pair_it_replaces(seed):
    grad = _gradient_cases(seed).permute(0, 2, 3, 1)
    got = intlayers.grid_gradient_to_fixed(grad)
    want = intlayers.gradient_to_fixed(fixed.quantize_gradient(grad))
    assert got.exponent == want.exponent and _same(got.ints, want.ints)


def _quantize_gradient_reference(g: torch.Tensor) -> torch.Tensor:
    """fixed.quantize_gradient as it was written with tensor scalars."""
    if g.numel() == 0:
        return g
    low, high = torch.aminmax(g)
    peak = torch.maximum(-low, high)
    if not bool(peak > 0):
        return torch.zeros_like(g)
    _, exponent = torch.frexp(peak)
    if int(exponent) - GRAD_BITS < fixed.MIN_GRAD_EXPONENT:
        return torch.zeros_like(g)
    step = math.ldexp(1.0, int(exponent) - GRAD_BITS)
    return (g / step).round_().mul_(step)


@pytest.mark.parametrize("seed", range(64))
def test_quantize_gradient_reads_its_peak_as_the_tensor_version_did(seed):
    g = _gradient_cases(seed)
    assert _same(fixed.quantize_gradient(g), _quantize_gradient_reference(g))


@pytest.mark.parametrize("exponent", [-1200, -1075, -1074, -1070, -1022, -40, 0, 17, 1000, 1023, 1024, 1100])
def test_as_float_is_torch_ldexp(exponent):
    ints = torch.tensor([0, 1, -1, 3, 2 ** 40, -(2 ** 52) + 1], dtype=torch.int64)
    want = torch.ldexp(ints.double(), torch.tensor(float(exponent), dtype=torch.float64))
    assert _same(intconv._as_float(ints, exponent), want)


def _recombined_reference(products, a_limbs, b_limbs, rows, columns, dtype, a_width):
    """stacked_product's recombination as shifts and adds, block by block."""
    result = None
    for i in range(a_limbs):
        for j in range(b_limbs):
            block = products[i * rows:(i + 1) * rows, j * columns:(j + 1) * columns].to(dtype).clone()
            shift = a_width * i + kernels.SEVEN_BIT_LIMB_BITS * j
            block <<= shift
            result = block if result is None else result + block
    return result


@pytest.mark.parametrize("seed", range(24))
def test_stacked_product_recombines_limbs_exactly(seed):
    g = torch.Generator().manual_seed(seed)
    a_limbs, b_limbs, a_width = 1 + seed % 2, 1 + (seed // 2) % 2, (8, 7)[(seed // 4) % 2]
    rows, depth, columns = 1 + seed % 5, 3 + seed, 1 + (seed * 7) % 13
    low, high = -(1 << (a_width - 1)), (1 << (a_width - 1)) - 1
    a = torch.randint(low, high + 1, (a_limbs * rows, depth), generator=g, dtype=torch.int8)
    b = torch.randint(-64, 64, (depth, b_limbs * columns), generator=g, dtype=torch.int8)
    if seed % 3 == 0:
        a.fill_(low)
        b.fill_(-64)
    for bound in (None, 2 ** 31):
        got = kernels.stacked_product(a, a_limbs, b, b_limbs, kernels.KERNELS["float64"], bound, a_width)
        products = torch.mm(a.double(), b.double()).to(torch.int32)
        dtype = got.dtype
        if a_limbs == b_limbs == 1:
            want = products.to(dtype)
        else:
            want = _recombined_reference(products, a_limbs, b_limbs, rows, columns, dtype, a_width)
        assert torch.equal(got, want)
        # the wide product itself, from the integers the limbs stand for
        a_value = sum(a[i * rows:(i + 1) * rows].long() << (a_width * i) for i in range(a_limbs))
        b_value = sum(b[:, j * columns:(j + 1) * columns].long() << (7 * j) for j in range(b_limbs))
        assert torch.equal(got.long(), a_value @ b_value)


@pytest.mark.parametrize("batch, side", [(2, 3), (16, 9)])
def test_output_pieces_backward_is_the_sum_into_zeros(batch, side):
    """Disjoint strided pieces, some without a gradient, -0.0 among the gradients: 0.0 + g, bit for bit
    (a small output through index_select, a large one through the loop)."""
    g = torch.Generator().manual_seed(5)
    output = torch.randn(batch, 12, side, side, generator=g, dtype=torch.float64, requires_grad=True)
    if side == 9:
        output = output.repeat(1, 8, 1, 1).detach().requires_grad_(True)  # 96 channels: past SMALL_OUTPUT
    assert (output.numel() <= mixture.SMALL_OUTPUT) == (side == 3)
    pieces = [slice(0, 6, 3), slice(1, 6, 3), slice(6, 9), slice(10, 12)]
    parts = mixture.output_pieces(output, pieces)
    weights = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in parts]
    weights[0].view(-1)[0] = -0.0
    weights[1].view(-1)[1] = 0.0
    loss = sum((p * w).sum() for p, w in zip(parts, weights) if w is not weights[2])
    loss.backward()
    want = torch.zeros(output.shape, dtype=torch.float64)
    for piece, weight in zip(pieces, weights):
        if weight is not weights[2]:
            want[:, piece] += weight * 1.0
    assert _same(output.grad, want)
    assert not torch.signbit(output.grad[0, 0, 0, 0])  # 0.0 + (-0.0) = +0.0


def _prepare_reference(conv: intconv.IntConv3x3) -> tuple:
    """IntConv3x3._prepare from the public weight_ints/bias_ints, by the plain passes."""
    scales = conv._scales()
    weights = conv.weight_ints()
    bias = conv.bias_ints()
    out_channels, in_channels = weights.shape[:2]
    columns = intconv._limb_columns(weights.permute(2, 3, 1, 0).reshape(-1, out_channels), conv.weight_limbs)
    coarse = weights if scales.coarse is None else (weights + scales.coarse[0]) >> scales.coarse[1]
    rows = coarse.flip(2, 3).permute(2, 3, 0, 1).reshape(-1, in_channels)
    bound = conv.input_gradient_bound()
    if bound << intconv.LEAKY_SHIFT >= intconv.INT32_LIMIT and rows.numel():
        bound = conv.gradient_limit * int(rows.abs().sum(0).max())
    offset = (bias << scales.left_shift) + scales.half
    wide = (scales.product_bound << scales.left) + int(offset.abs().max()) >= intconv.INT32_LIMIT
    dtype = torch.int64 if wide else torch.int32
    return weights, columns, intconv._limb_columns(rows, conv.weight_limbs), offset.to(dtype), dtype, bound


@pytest.mark.parametrize("seed", range(16))
def test_prepare_is_its_plain_passes(seed):
    """One- and two-limb weights, per-channel exponents (coarsened rows), half steps, wide offsets."""
    g = torch.Generator().manual_seed(seed)
    in_channels, out_channels = 1 + seed % 5, 2 + (seed * 3) % 7
    weight = torch.randn(out_channels, in_channels, 3, 3, generator=g, dtype=torch.float64)
    weight *= torch.rand(out_channels, 1, 1, 1, generator=g, dtype=torch.float64) * 4
    bias = torch.randn(out_channels, generator=g, dtype=torch.float64)
    conv = intconv.IntConv3x3(weight, bias, input_exponent=-6 + seed % 3, output_exponent=-5 - seed % 4,
                              weight_limbs=1 + seed % 2, per_channel=seed % 4 != 3)
    with torch.no_grad():
        conv.weight.add_(torch.randn(conv.weight.shape, generator=g, dtype=torch.float64) * (seed % 3) * 0.5)
        if seed % 5 == 1:  # every weight on a half step of its grid
            scale = torch.ldexp(torch.ones(out_channels, dtype=torch.float64), conv.weight_exponents.double())
            scale = scale[:, None, None, None]
            conv.weight.copy_((torch.round(conv.weight / scale) + 0.5) * scale)
        conv.bias.mul_(10.0 ** (seed % 4 * 3))
    prepared = conv._prepare()
    weights, columns, rows, offset, dtype, bound = _prepare_reference(conv)
    assert torch.equal(prepared.weights, weights) and prepared.weights.dtype == weights.dtype
    assert prepared.columns.dtype == columns.dtype == torch.int8 and torch.equal(prepared.columns, columns)
    assert prepared.rows.dtype == rows.dtype == torch.int8 and torch.equal(prepared.rows, rows)
    assert prepared.dtype == dtype and prepared.offset.dtype == offset.dtype and torch.equal(prepared.offset, offset)
    assert prepared.input_gradient_bound == bound
