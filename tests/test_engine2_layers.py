"""Engine 2 inside a model: exact/intlayers.IntegerConvStack, the autograd wrapper over IntConvStack.

test_engine2_kernels.py proves the limb product and test_engine2_conv.py the
integer layers; this proves what the wrapper adds between them and autograd:

* forward and parameter gradients are the same floats under every kernel, for
  random and extreme weights, inputs and loss gradients, and equal to
  IntConvStack's own integer step fed the same integers (so the float <->
  integer conversions on both sides of the wrapper lose nothing);
* ``gradient_to_fixed`` keeps engine 1's gradient grid (what reaches
  it in float64) and rounds half up elsewhere (float32 training);
* a stack that serves two places of one graph accumulates both gradients;
* frozen parameters cost nothing: no weight gradient nobody wants, no pass
  below the lowest conv that adapts.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from fractions import Fraction
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from osoa_zip.exact import intlayers
from osoa_zip.exact.fixed import ACT_LIMIT, MIN_GRAD_EXPONENT, quantize_activation, quantize_gradient
from osoa_zip.exact.grid import CONTEXT_EXPONENT, GRAD_BITS
from osoa_zip.exact.intconv import Fixed, IntConv3x3
from osoa_zip.exact.intlayers import ENGINE2_LAYOUT, IntegerConvStack, gradient_to_fixed
from osoa_zip.exact.kernels import KERNELS


@contextmanager
def kernel_in_use(name: str):
    """The wrapper runs on ``name``'s kernel (as OSOA_ZIP_KERNEL would choose it for the process)."""
    with mock.patch.object(intlayers, "current_kernel", lambda: KERNELS[name]):
        yield


def _stack(generator, widths, spread: int, calibration: torch.Tensor) -> IntegerConvStack:
    """An engine-2 stack (the shipped layout: 14-bit first weights, 16-bit last input and output)
    with random weights whose output channels differ by up to 2**spread in scale."""
    weights = []
    for a, b in zip(widths, widths[1:]):
        weight = torch.randn(b, a, 3, 3, generator=generator, dtype=torch.float64) * (2 / (9 * a)) ** 0.5
        weight *= torch.pow(2.0, torch.randint(-spread, spread + 1, (b, 1, 1, 1), generator=generator))
        weights.append((weight, torch.randn(b, generator=generator, dtype=torch.float64) * 0.1))
    return IntegerConvStack.from_float(weights, calibration, CONTEXT_EXPONENT, **ENGINE2_LAYOUT)


def _pixels(generator, shape, mode: str) -> torch.Tensor:
    """Pixels (0..255) as the coupling context: uniform, only 0 and 255, or all one of them."""
    if mode == "random":
        pixels = torch.randint(0, 256, shape, generator=generator)
    elif mode == "extreme":
        pixels = torch.where(torch.rand(shape, generator=generator) < 0.5, 0, 255)
    else:
        pixels = torch.full(shape, 0 if mode == "black" else 255)
    return (pixels - 128).double() * 2.0 ** CONTEXT_EXPONENT


def _loss_weights(generator, shape, mode: str) -> torch.Tensor:
    """d loss / d output: random, or huge and tiny magnitudes side by side (extreme)."""
    target = torch.randn(shape, generator=generator, dtype=torch.float64)
    if mode == "extreme":
        target *= torch.pow(2.0, torch.randint(-40, 41, shape, generator=generator).double())
    return target


def _run(stack: IntegerConvStack, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Forward, loss = sum(output * target), backward: (output, every parameter's gradient)."""
    for parameter in stack.parameters():
        parameter.grad = None
    output = stack(x)
    (output * target).sum().backward()
    return output.detach(), [None if p.grad is None else p.grad.clone() for p in stack.parameters()]


def _reference(stack: IntegerConvStack, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, list]:
    """The same numbers without the wrapper: IntConvStack's integer step on float64's kernel, the
    output floored onto engine 1's activation grid, the loss gradient put on engine 1's gradient
    grid (what quantize_activation's backward hands the wrapper) and turned into integers here."""
    ints = (x * 2.0 ** -CONTEXT_EXPONENT).round().to(torch.int8).permute(0, 2, 3, 1)

    def loss_grad(output: Fixed) -> Fixed:
        values = torch.ldexp(output.ints.double(), torch.tensor(float(output.exponent)))
        inside = (values >= -ACT_LIMIT) & (values <= ACT_LIMIT)
        grad = quantize_gradient(target.permute(0, 2, 3, 1) * inside)
        peak = float(grad.abs().max())
        if peak == 0:
            return Fixed(torch.zeros(grad.shape, dtype=torch.int32), 0)
        exponent = math.frexp(peak)[1] - GRAD_BITS
        return Fixed(torch.ldexp(grad, torch.tensor(float(-exponent))).to(torch.int32), exponent)

    output = stack.step_ints(ints, loss_grad, KERNELS["float64"])
    values = torch.ldexp(output.ints.double(), torch.tensor(float(output.exponent))).permute(0, 3, 1, 2)
    floored = quantize_activation(values)
    return floored, [p.grad.clone() for p in stack.parameters()]


@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 2), height=st.integers(1, 7), width=st.integers(1, 7), hidden=st.integers(1, 9),
       depth=st.integers(2, 3), channels=st.sampled_from([1, 3, 9]), spread=st.integers(0, 6),
       inputs=st.sampled_from(["random", "extreme", "black", "white"]),
       loss=st.sampled_from(["random", "extreme"]), seed=st.integers(0, 2 ** 31))
def test_integer_stack_forward_and_gradients_are_the_same_on_every_kernel(batch, height, width, hidden, depth,
                                                                          channels, spread, inputs, loss, seed):
    """Calibrated on mild inputs, run on extreme ones (the hidden clamps engage), with per-channel
    weight scales up to 2**12 apart and loss gradients spanning 2**80: the output and every
    parameter gradient are identical under int8, float32 and float64, and equal to the stack's
    integer step without the wrapper."""
    generator = torch.Generator().manual_seed(seed)
    widths = [channels] + [hidden] * (depth - 1) + [2 * channels + 1]
    stack = _stack(generator, widths, spread, _pixels(generator, (2, channels, 6, 6), "random") / 4)
    x = _pixels(generator, (batch, channels, height, width), inputs)
    target = _loss_weights(generator, (batch, widths[-1], height, width), loss)
    results = {}
    for name in KERNELS:
        with kernel_in_use(name):
            results[name] = _run(stack, x, target)
    expected_output, expected_grads = _reference(stack, x, target)
    for name, (output, grads) in results.items():
        assert output.dtype == torch.float64 and torch.equal(output, expected_output), name
        assert all(torch.equal(a, b) for a, b in zip(grads, expected_grads)), name


def test_integer_stack_in_float32_is_the_same_integer_network():
    """Quantisation-aware training runs the stack on float32 tensors: the same output values as in
    float64 (16-bit integers times a power of two are exact in both), and parameter gradients in
    the parameters' dtype."""
    generator = torch.Generator().manual_seed(3)
    stack = _stack(generator, [3, 8, 8, 7], 2, _pixels(generator, (2, 3, 6, 6), "random"))
    x = _pixels(generator, (2, 3, 5, 6), "random")
    with kernel_in_use("float64"):
        double = stack(x)
        single = stack(x.float())
    assert single.dtype == torch.float32 and torch.equal(single.double(), double)
    single.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == p.dtype for p in stack.parameters())


def _on_engine1_grid(generator, size: int, peak_exponent: int) -> torch.Tensor:
    """Gradients as engine 1 hands them on: GRAD_BITS significant bits below the exact peak."""
    magnitudes = torch.pow(2.0, torch.randint(-60, 1, (size,), generator=generator).double())
    values = torch.randn(size, generator=generator, dtype=torch.float64) * magnitudes
    return quantize_gradient(torch.ldexp(values, torch.tensor(float(peak_exponent))))


def _round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def _expected_fixed(values: list[float]) -> tuple[list[int], int] | None:
    """GRAD_BITS below the exact peak, rounded half up, in Python's exact fractions (None: all zero)."""
    peak = max(abs(v) for v in values)
    if peak == 0:
        return None
    exponent = math.frexp(peak)[1] - GRAD_BITS
    return [_round_half_up(Fraction(v) * Fraction(2) ** -exponent) for v in values], exponent


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 40), peak_exponent=st.integers(MIN_GRAD_EXPONENT + GRAD_BITS + 2, 1000),
       seed=st.integers(0, 2 ** 31))
def test_gradient_to_fixed_on_engine1s_gradient_grid(size, peak_exponent, seed):
    """What reaches the wrapper in float64 (quantize_activation's backward) is on engine 1's
    gradient grid: the integers are those values, exactly, unless engine 1 rounded the peak up to
    a power of two (then the scale is one bit coarser and the odd units round half up)."""
    grad = _on_engine1_grid(torch.Generator().manual_seed(seed), size, peak_exponent)
    fixed = gradient_to_fixed(grad)
    expected = _expected_fixed(grad.tolist())
    assert fixed.ints.dtype == torch.int32
    if expected is None:
        assert not bool(fixed.ints.any())
        return
    assert (fixed.ints.tolist(), fixed.exponent) == expected
    assert 2 ** (GRAD_BITS - 1) <= int(fixed.ints.abs().max()) <= 2 ** GRAD_BITS
    if math.frexp(float(grad.abs().max()))[0] != 0.5:  # the peak is not a power of two
        assert torch.equal(torch.ldexp(fixed.ints.double(), torch.tensor(float(fixed.exponent))), grad)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=30))
def test_gradient_to_fixed_rounds_float32_gradients_half_up(values):
    """Float32 training hands over gradients off any grid: GRAD_BITS below the exact peak, rounded
    half up, against Python's exact fractions (float32's 24 bits make the float64 sum exact)."""
    fixed = gradient_to_fixed(torch.tensor(values, dtype=torch.float32))
    expected = _expected_fixed(values)
    if expected is None:
        assert not bool(fixed.ints.any())
    else:
        assert (fixed.ints.tolist(), fixed.exponent) == expected


def test_gradient_to_fixed_examples():
    """Ties go up (also for negatives), an empty or all-zero gradient is zeros, and a gradient below
    engine 1's smallest exponent is zero as engine 1 makes it (not an overflow)."""
    tie = 2.0 ** -GRAD_BITS  # half a unit when the peak is 1 (a unit: 2 ** (1 - GRAD_BITS))
    fixed = gradient_to_fixed(torch.tensor([1.0, tie, -tie, 3 * tie, -3 * tie], dtype=torch.float64))
    assert (fixed.ints.tolist(), fixed.exponent) == ([2 ** (GRAD_BITS - 1), 1, 0, 2, -1], 1 - GRAD_BITS)
    assert gradient_to_fixed(torch.zeros(0)).ints.numel() == 0
    assert not bool(gradient_to_fixed(torch.zeros(2, 3)).ints.any())
    for tiny in (2.0 ** (MIN_GRAD_EXPONENT - 30), 5e-324):
        assert not bool(gradient_to_fixed(torch.tensor([tiny, -tiny], dtype=torch.float64)).ints.any())


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_a_stack_used_twice_in_one_graph_accumulates_both_gradients(kernel):
    """One stack serving two places of a graph (as one flow level's predictor serves several
    sub-lattices): its gradients are the sums of each use's, as for any module."""
    generator = torch.Generator().manual_seed(11)
    stack = _stack(generator, [3, 6, 6, 5], 3, _pixels(generator, (2, 3, 6, 6), "random"))
    first, second = (_pixels(generator, (2, 3, 5, 4), mode) for mode in ("random", "extreme"))
    targets = [_loss_weights(generator, (2, 5, 5, 4), "random") for _ in range(2)]
    with kernel_in_use(kernel):
        separate = [_run(stack, x, target)[1] for x, target in zip((first, second), targets)]
        for parameter in stack.parameters():
            parameter.grad = None
        ((stack(first) * targets[0]).sum() + (stack(second) * targets[1]).sum()).backward()
    for parameter, a, b in zip(stack.parameters(), *separate):
        assert torch.equal(parameter.grad, a + b)
    assert not torch.equal(separate[0][0], separate[1][0])  # the two uses did contribute differently


def _spy_on_gradients():
    """Record every IntConv3x3.gradients call as (layer, need_input, need_weight)."""
    calls = []
    original = IntConv3x3.gradients

    def spy(self, saved, grad, kernel=None, need_input=True, masked=False, need_weight=True):
        calls.append((self, need_input, need_weight))
        return original(self, saved, grad, kernel, need_input, masked, need_weight)
    return calls, mock.patch.object(IntConv3x3, "gradients", spy)


@pytest.mark.parametrize("frozen, expected_calls", [
    # what adapts -> the gradients calls made, top conv first: (conv, need_input, need_weight)
    ({"0.weight", "0.bias", "1.weight", "1.bias"}, [(2, False, True)]),           # "last"
    ({"0.weight", "1.weight", "2.weight"}, [(2, True, False), (1, True, False), (0, False, False)]),  # "bias"
    ({"0.weight", "0.bias", "1.weight"}, [(2, True, True), (1, False, False)]),
    (set(), [(2, True, True), (1, True, True), (0, False, True)]),                 # "all"
], ids=["last", "bias", "top-two-biases", "all"])
def test_frozen_parameters_skip_their_work(frozen, expected_calls):
    """Adaptation freezes what it does not select (requires_grad False): the backward pass
    computes no weight gradient nobody wants and stops at the lowest conv that adapts;
    what does adapt gets the gradients of the full pass, and the frozen keep none."""
    generator = torch.Generator().manual_seed(5)
    stack = _stack(generator, [3, 6, 6, 5], 2, _pixels(generator, (2, 3, 6, 6), "random"))
    x = _pixels(generator, (2, 3, 5, 5), "random")
    target = _loss_weights(generator, (2, 5, 5, 5), "random")
    with kernel_in_use("float64"):
        _, full = _run(stack, x, target)
        names = [name.removeprefix("convs.") for name, _ in stack.named_parameters()]
        for name, parameter in stack.named_parameters():
            parameter.requires_grad_(name.removeprefix("convs.") not in frozen)
        calls, spy = _spy_on_gradients()
        with spy:
            _, partial = _run(stack, x, target)
    assert [(list(stack.convs).index(layer), need_input, need_weight)
            for layer, need_input, need_weight in calls] == expected_calls
    for name, all_grads, some_grads in zip(names, full, partial):
        assert (some_grads is None) if name in frozen else torch.equal(some_grads, all_grads), name


def test_a_fully_frozen_stack_keeps_nothing_for_backward():
    """With every parameter frozen the forward pass runs alone: nothing is kept for a backward
    pass, the output does not require a gradient, and it is the same output (also under no_grad,
    where nothing outlives the call whatever was kept)."""
    generator = torch.Generator().manual_seed(9)
    stack = _stack(generator, [3, 6, 5], 1, _pixels(generator, (2, 3, 6, 6), "random"))
    x = _pixels(generator, (1, 3, 4, 4), "extreme")
    kept = []
    original = IntegerConvStack._forward

    def spy(self, ints, kernel, keep, **options):
        kept.append(keep)
        return original(self, ints, kernel, keep, **options)
    with kernel_in_use("int8"), mock.patch.object(IntegerConvStack, "_forward", spy):
        wanted = stack(x)
        stack.requires_grad_(False)
        frozen = stack(x)
        stack.requires_grad_(True)
        with torch.no_grad():
            unrecorded = stack(x)
    assert kept[:2] == [True, False]
    assert not frozen.requires_grad and torch.equal(frozen, wanted.detach())
    assert not unrecorded.requires_grad and torch.equal(unrecorded, wanted.detach())
