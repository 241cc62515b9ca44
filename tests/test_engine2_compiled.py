"""Engine 2's compiled passes (exact/conv_kernels.py) against the torch passes: the same integers."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from osoa_zip.coding import native
from osoa_zip.exact import conv_kernels, intconv

pytestmark = pytest.mark.skipif(not conv_kernels.available(), reason="numba (the fast extra) is not installed")


@pytest.mark.parametrize("seed", range(8))
def test_compiled_leaky_framed_matches_torch(seed, monkeypatch):
    """Hidden outputs clamped one beyond the range or not, into one int8 limb or two 8-bit limbs,
    int32 and int64 sums: the framed input (frame included) and the values backward keeps."""
    g = torch.Generator().manual_seed(seed)
    batch, height, width, channels = 1 + seed % 3, 1 + seed % 4, 2 + seed % 5, 1 + 7 * (seed % 3)
    next_limbs = 1 + seed % 2
    output_range = intconv.HIDDEN_RANGE if next_limbs == 1 else (-32896, 32639)
    low, high = output_range
    clamped = seed % 4 >= 2
    values = torch.randint(low - (1 if clamped else 0), high + (2 if clamped else 1),
                           (batch * height * width, channels), generator=g)
    values[0, 0] = low - 1 if clamped else low
    values = values.to(torch.int64 if seed % 3 == 0 else torch.int32)
    saved = intconv._Saved(None, None, values, clamped, (batch, height, width, channels))
    results = []
    for compiled in (True, False):
        monkeypatch.setattr(conv_kernels, "available", lambda compiled=compiled: compiled)
        results.append(intconv._leaky_framed(saved, output_range, next_limbs, (batch, height, width)))
    (framed, kept), (expected_framed, expected_kept) = results
    assert framed.dtype == expected_framed.dtype and torch.equal(framed, expected_framed)
    assert kept.dtype == expected_kept.dtype and torch.equal(kept, expected_kept)


@pytest.mark.parametrize("seed", range(12))
def test_compiled_gradient_columns_match_torch(seed, monkeypatch):
    """A gradient rounded onto its grid and split into two 7-bit limbs: int32 and int64 sums,
    extremes at +-2**31 and beyond, shifts from 0 up, ties: the same columns and exponent."""
    g = torch.Generator().manual_seed(seed)
    positions, channels = 1 + 37 * (seed % 4), 1 + 11 * (seed % 5)
    peak = [100, 8127, 8128, 2 ** 20, 2 ** 31 - 1, 2 ** 40][seed % 6]
    ints = torch.randint(-peak, peak + 1, (positions, channels), generator=g)
    ints.view(-1)[0] = peak if seed % 2 else -peak
    if seed % 3 == 1:  # ties: odd multiples of half a step
        ints = ints.bitwise_or(1 << 5)
    dtype = torch.int64 if peak >= 2 ** 31 or seed % 4 == 3 else torch.int32
    ints = ints.to(dtype)
    results = []
    for compiled in (True, False):
        monkeypatch.setattr(conv_kernels, "available", lambda compiled=compiled: compiled)
        results.append(intconv._gradient_columns(ints.clone(), -7, intconv.gradient_limit(2), 2, seed % 2 == 0))
    (columns, exponent, sums), (expected, expected_exponent, no_sums) = results
    assert exponent == expected_exponent
    assert columns.dtype == expected.dtype == torch.int8 and torch.equal(columns, expected)
    # The column sums (the bias gradient) are those of the limbs' recombination, low + 2**7 * high.
    assert no_sums is None
    rounded = expected[:, :channels].long() + (expected[:, channels:].long() << 7)
    assert sums.dtype == torch.int64 and torch.equal(sums, rounded.sum(0))


@pytest.mark.parametrize("seed", range(12))
def test_compiled_leaky_gradient_matches_torch(seed, monkeypatch):
    """The leaky ReLU's gradient folded with the clamp's mask: values kept narrow (int16) or not,
    clamped or not, int32 and int64 gradients (near the bound that promotes int32): the same integers."""
    g = torch.Generator().manual_seed(seed)
    positions, channels = 1 + 29 * (seed % 4), 1 + 13 * (seed % 3)
    output_range = intconv.HIDDEN_RANGE if seed % 2 else (-32896, 32639)
    low, high = output_range
    clamped = seed % 4 >= 2
    values = torch.randint(low - (1 if clamped else 0), high + (2 if clamped else 1), (positions, channels),
                           generator=g)
    values.view(-1)[0] = low - 1 if clamped else 0
    values = values.to(torch.int16 if seed % 2 else torch.int32)
    bound = [8127, 2 ** 28 - 1, 2 ** 28, 2 ** 40][seed % 4]
    ints = torch.randint(-bound, bound + 1, (positions, channels), generator=g)
    ints = ints.to(torch.int64 if bound >= 2 ** 31 or seed % 3 == 0 else torch.int32)
    saved = intconv._Saved(None, None, values, clamped, (1, positions, 1, channels))
    results = []
    for compiled in (True, False):
        monkeypatch.setattr(conv_kernels, "available", lambda compiled=compiled: compiled)
        results.append(intconv._leaky_gradient(intconv.Fixed(ints.clone(), -5), saved, output_range, bound))
    got, want = results
    assert got.exponent == want.exponent == -8
    assert got.ints.dtype == want.ints.dtype and torch.equal(got.ints, want.ints)


def test_compiled_stack_step_matches_torch(monkeypatch):
    """A v7-shaped engine-2 stack (two-limb first weights and last input), forward and backward,
    both ways: identical outputs and gradients."""
    from osoa_zip.exact.intlayers import IntegerConvStack

    g = torch.Generator().manual_seed(3)
    stack = IntegerConvStack.empty(3, 16, 12, 3)
    for conv in stack.convs:
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=torch.float64) * 0.3)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g, dtype=torch.float64) * 0.1)
    x = torch.randint(-128, 128, (2, 3, 8, 8), generator=g).double() / 64
    results = []
    for compiled in (True, False):
        monkeypatch.setattr(conv_kernels, "available", lambda compiled=compiled: compiled)
        for p in stack.parameters():
            p.grad = None
        y = stack(x)
        (y * torch.linspace(-3, 3, y.numel(), dtype=torch.float64).view(y.shape)).sum().backward()
        results.append([y.detach()] + [p.grad.clone() for p in stack.parameters()])
    for got, want in zip(*results):
        assert torch.equal(got, want)


def _both_ways(function):
    """(function() with the compiled passes, function() with the torch passes)."""
    loaded = conv_kernels.available
    results = []
    try:
        for compiled in (True, False):
            conv_kernels.available = lambda compiled=compiled: compiled
            results.append(function())
    finally:
        conv_kernels.available = loaded
    return results


def _assert_same_prepared(got, want):
    for name, a, b in zip(want._fields, got, want):
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), name
        else:
            assert a == b, name


@settings(max_examples=60, deadline=None)
@given(out_channels=st.integers(1, 9), in_channels=st.integers(1, 7), weight_limbs=st.integers(1, 3),
       per_channel=st.booleans(), input_exponent=st.integers(-12, 4), output_shift=st.integers(-6, 20),
       stretch=st.sampled_from([0.5, 1.0, 3.0, 1e6]), ties=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_compiled_prepare_matches_torch(out_channels, in_channels, weight_limbs, per_channel, input_exponent,
                                        output_shift, stretch, ties, seed):
    """IntConv3x3's prepared integers (weights, limb columns, rotated and coarsened limb rows, bias
    offsets, accumulator type and bounds) from the compiled pass and from the torch passes: per-channel
    and per-tensor scales (coarsened rows), one to three weight limbs, output shifts of both signs, weights
    that adapted beyond the grid's range (clamped), ties at half a step, huge biases."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_channels, in_channels, 3, 3, generator=g, dtype=torch.float64)
    weight *= torch.rand(out_channels, 1, 1, 1, generator=g, dtype=torch.float64) * 4  # channels' scales differ
    bias = torch.randn(out_channels, generator=g, dtype=torch.float64) * stretch
    conv = intconv.IntConv3x3(weight, bias, input_exponent=input_exponent,
                              output_exponent=input_exponent + output_shift, weight_limbs=weight_limbs,
                              per_channel=per_channel)
    with torch.no_grad():
        conv.weight.mul_(stretch)  # adapted beyond the calibrated range: clamped onto the grid
        if ties:  # every weight half a step off its grid
            scale = torch.ldexp(torch.ones(out_channels, dtype=torch.float64), conv.weight_exponents.double())
            conv.weight.copy_((conv.weight / scale[:, None, None, None]).floor().add(0.5) * scale[:, None, None, None])
        conv.weight.view(-1)[0] = -conv.weight.view(-1)[0]
    assert conv._prepare_compiled(conv._scales()) is not None  # the compiled pass takes these
    got, want = _both_ways(conv._prepare)
    _assert_same_prepared(got, want)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan"), 1e300])
@pytest.mark.parametrize("where", ["weight", "bias"])
def test_compiled_prepare_leaves_odd_parameters_to_torch(bad, where):
    """A weight or bias that is not finite or whose integer leaves int64: the compiled pass declines
    (None) and ``_prepare`` gives the torch passes' integers."""
    g = torch.Generator().manual_seed(7)
    conv = intconv.IntConv3x3(torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64),
                              torch.randn(4, generator=g, dtype=torch.float64), input_exponent=-6, output_exponent=-3)
    with torch.no_grad():
        getattr(conv, where).view(-1)[1] = bad
    conv_kernels.available()
    if bad != 1e300 or where == "bias":
        assert conv._prepare_compiled(conv._scales()) is None
    if bad == bad and where == "weight":  # a NaN weight has no integer on either path
        got, want = _both_ways(conv._prepare)
        _assert_same_prepared(got, want)


@settings(max_examples=60, deadline=None)
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 6), st.integers(1, 6)),
       magnitude=st.integers(-1040, 1000), grid=st.sampled_from(["random", "ties", "peak", "zeros", "tiny"]),
       seed=st.integers(0, 2 ** 16))
def test_compiled_grid_gradient_matches_torch(shape, magnitude, grid, seed):
    """A stack's incoming float64 gradient (NCHW, taken as its NHWC permute) to integers: random values
    over the whole exponent range, values on the grid with ties at half a step (round half to even), a
    peak that rounds up to 2**GRAD_BITS (the exponent then grows by one), all zeros, exponents below
    MIN_GRAD_EXPONENT: the same integers and exponent as the torch passes."""
    from osoa_zip.exact import intlayers
    from osoa_zip.exact.fixed import GRAD_BITS

    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(shape, generator=g, dtype=torch.float64) * 2.0 ** magnitude
    if grid == "ties":  # scaled up in two steps: 2.0 ** (GRAD_BITS - 2 - magnitude) overflows below -1009
        up = GRAD_BITS - 2 - magnitude
        grad = (grad * 2.0 ** (up // 2) * 2.0 ** (up - up // 2)).floor().add(0.5) * 2.0 ** (magnitude - GRAD_BITS + 2)
    elif grid == "peak":
        grad.view(-1)[0] = -(2.0 ** GRAD_BITS - 0.5) * 2.0 ** (magnitude - GRAD_BITS)
        grad.clamp_(-abs(grad.view(-1)[0]), abs(grad.view(-1)[0]))
    elif grid == "zeros":
        grad.zero_()
    elif grid == "tiny":
        grad *= 2.0 ** -1050
    grad = grad.contiguous() if seed % 3 else grad.transpose(2, 3).contiguous().transpose(2, 3)  # any strides
    got, want = _both_ways(lambda: intlayers.grid_gradient_to_fixed(grad.permute(0, 2, 3, 1)))
    assert got.exponent == want.exponent
    assert got.ints.dtype == want.ints.dtype == torch.int32 and torch.equal(got.ints, want.ints)


def test_compiled_network_pass_matches_torch():
    """v7's RGB network (its stacks' outputs on the activation grid, converted in one compiled pass),
    a forward pass with its loss and backward, both ways: the same loss, factors and gradients."""
    import copy

    from osoa_zip.models.registry import DEFAULT_MODEL, load_model

    network = copy.deepcopy(load_model(DEFAULT_MODEL).network(3))
    stacks = [m for m in network.modules() if hasattr(m, "convs")]
    assert any(stack.convs[-1].output_exponent <= -8 for stack in stacks)  # on the grid: the compiled pass runs
    pixels = torch.randint(0, 256, (2, 3, 16, 16), generator=torch.Generator().manual_seed(5)).double()

    def run():
        for conv in (m for m in network.modules() if isinstance(m, intconv.IntConv3x3)):
            conv.__dict__.pop("_prepared_cache", None)  # prepared again on this path
        network.zero_grad()
        loss, factors = network.analyse(pixels, True)
        loss.backward()
        return loss.detach(), [t for factor in factors for t in factor], [p.grad.clone() for p in network.parameters()]

    got, want = _both_ways(run)
    assert torch.equal(got[0], want[0])
    for a, b in zip(got[1] + got[2], want[1] + want[2]):
        assert a.dtype == b.dtype and torch.equal(a, b)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int64)  # signed zeros and NaN payloads too


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=4), steps=st.integers(1, 4),
       scale=st.sampled_from([1e-300, 1e-12, 1.0, 1e6, 1e150]), lr=st.sampled_from([5e-5, 1e-3, 0.5]),
       betas=st.sampled_from([(0.9, 0.999), (0.5, 0.25), (0.0, 0.0)]), seed=st.integers(0, 2 ** 16))
def test_compiled_adam_matches_torch_lines(sizes, steps, scale, lr, betas, seed):
    """ExactAdam's compiled step against its torch lines, over several steps: random gradients
    from tiny (subnormal squares) to huge, exact zeros of both signs, a parameter without a
    gradient, moments swapped for copies between steps: the same parameters, moments and version
    bumps, bit for bit."""
    from osoa_zip.exact.optim import ExactAdam

    g = torch.Generator().manual_seed(seed)
    start = [torch.randn(size, generator=g, dtype=torch.float64) for size in sizes]
    runs = []
    for compiled in (True, False):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        optimizer = ExactAdam(params, lr, betas, 1e-8)
        loaded = native.available
        native.available = lambda compiled=compiled: compiled
        try:
            gen = torch.Generator().manual_seed(seed + 1)
            versions = []
            for step in range(steps):
                if step == 2:  # moments restored from copies, as the engine does after a rejected step
                    optimizer.first = [m.clone() for m in optimizer.first]
                    optimizer.second = [v.clone() for v in optimizer.second]
                for index, p in enumerate(params):
                    grad = torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale
                    grad[::7] = 0.0
                    grad[1::7] = -0.0
                    p.grad = None if index == 1 and len(params) > 2 else grad
                before = [p._version for p in params]
                optimizer.step()
                versions.append([p._version > b for p, b in zip(params, before)])
        finally:
            native.available = loaded
        runs.append((params, optimizer, versions))
    (params, optimizer, versions), (expected, expected_optimizer, expected_versions) = runs
    assert versions == expected_versions
    for a, b in zip(params + optimizer.first + optimizer.second,
                    expected + expected_optimizer.first + expected_optimizer.second):
        assert torch.equal(_bits(a), _bits(b))
