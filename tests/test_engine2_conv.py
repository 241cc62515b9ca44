"""Engine 2's quantised 3x3 conv: exact forward and backward, the same integers on every kernel.

The reference is torch's float64 convolution of the same integers (exact:
every sum is far below 2**53), with the same rounding rule applied after.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.grad import conv2d_input, conv2d_weight

from osoa_zip.exact.intconv import (
    HIDDEN_RANGE,
    Fixed,
    IntConv3x3,
    IntConvStack,
    gradient_limit,
    leaky_relu_ints,
    quantize_gradient,
)
from osoa_zip.exact.kernels import KERNELS, limb_range, shift_round
from osoa_zip.exact.optim import ExactAdam


def _nchw(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2).double()


def _layer(generator, in_channels, out_channels, weight_limbs, per_channel, input_limbs=1):
    weight = torch.randn(out_channels, in_channels, 3, 3, generator=generator, dtype=torch.float64) * 0.3
    weight[0] *= 8  # per-channel exponents then differ
    bias = torch.randn(out_channels, generator=generator, dtype=torch.float64)
    return IntConv3x3(weight, bias, input_exponent=-6, output_exponent=-3, output_range=HIDDEN_RANGE,
                      input_limbs=input_limbs, weight_limbs=weight_limbs, per_channel=per_channel)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), height=st.integers(1, 9), width=st.integers(1, 9),
       in_channels=st.integers(1, 12), out_channels=st.integers(1, 12), input_limbs=st.integers(1, 2),
       weight_limbs=st.integers(1, 2), per_channel=st.booleans(), extreme=st.booleans(), seed=st.integers(0, 2 ** 31))
def test_conv_forward_backward_exact_on_every_kernel(batch, height, width, in_channels, out_channels, input_limbs,
                                                     weight_limbs, per_channel, extreme, seed):
    generator = torch.Generator().manual_seed(seed)
    layer = _layer(generator, in_channels, out_channels, weight_limbs, per_channel, input_limbs)
    low, high = limb_range(8, input_limbs)
    shape = (batch, height, width, in_channels)
    if extreme:
        x = torch.where(torch.rand(shape, generator=generator) < 0.5, low, high)
        grad_ints = torch.where(torch.rand(shape[:3] + (out_channels,), generator=generator) < 0.5, -30000, 30000)
    else:
        x = torch.randint(low, high + 1, shape, generator=generator)
        grad_ints = torch.randint(-30000, 30001, shape[:3] + (out_channels,), generator=generator)
    grad = Fixed(grad_ints, -20)

    # The reference, from torch's float64 convolution of the same integers.
    w = layer.weight_ints()
    acc = torch.nn.functional.conv2d(_nchw(x), w.double(), padding=1).long().permute(0, 2, 3, 1)
    shifted = shift_round(acc + layer.bias_ints(), layer._output_shift())
    expected_y = shifted.clamp(*HIDDEN_RANGE)
    inside = (shifted >= HIDDEN_RANGE[0]) & (shifted <= HIDDEN_RANGE[1])
    limit = gradient_limit(2)
    g = quantize_gradient(grad_ints * inside, grad.exponent, limit)
    g_nchw = _nchw(g.ints.view(expected_y.shape))
    expected_weight_grad = torch.ldexp(conv2d_weight(_nchw(x), w.shape, g_nchw, padding=1),
                                       torch.tensor(-6.0 + g.exponent, dtype=torch.float64))
    # The input gradient takes the weights on the coarsest channel's scale, rounded half up.
    coarsening = layer.weight_exponents.max() - layer.weight_exponents
    coarse = shift_round(w.long(), coarsening[:, None, None, None])
    expected_input_grad = conv2d_input(shape[:1] + (in_channels, height, width), coarse.double(), g_nchw,
                                       padding=1)

    for kernel in KERNELS.values():
        y, saved = layer.forward_ints(x, kernel)
        assert torch.equal(y.long(), expected_y)
        input_grad = layer.backward_ints(saved, grad, kernel)
        assert torch.equal(layer.weight.grad, expected_weight_grad)
        assert torch.equal(layer.bias.grad, torch.ldexp(g.ints.sum((0, 1, 2)).double(),
                                                        torch.tensor(float(g.exponent), dtype=torch.float64)))
        assert torch.equal(_nchw(input_grad.ints), expected_input_grad)
        assert input_grad.exponent == g.exponent + int(layer.weight_exponents.max())


@given(values=st.lists(st.integers(-2 ** 40, 2 ** 40), min_size=1, max_size=20), limbs=st.integers(1, 3))
def test_gradients_use_their_range(values, limbs):
    limit = gradient_limit(limbs)
    g = quantize_gradient(torch.tensor(values), -10, limit)
    assert g.ints.dtype == torch.int32 and int(g.ints.abs().max()) <= limit
    shift = g.exponent + 10
    assert g.ints.tolist() == [(v + ((1 << shift) >> 1)) >> shift for v in values]
    # the smallest such shift: one less would leave the range
    if shift > 0:
        finer = [(v + ((1 << (shift - 1)) >> 1)) >> (shift - 1) for v in values]
        assert max(abs(v) for v in finer) > limit


def test_gradient_examples():
    assert gradient_limit(1) == 63 and gradient_limit(2) == 8127
    assert quantize_gradient(torch.tensor([5, -7]), 0, 63).ints.tolist() == [5, -7]
    assert quantize_gradient(torch.tensor([64, -64]), 0, 63).ints.tolist() == [32, -32]
    assert quantize_gradient(torch.zeros(3, dtype=torch.int64), 4, 63).ints.tolist() == [0, 0, 0]


def test_leaky_relu_maps_the_hidden_range_onto_int8():
    y = torch.arange(HIDDEN_RANGE[0], HIDDEN_RANGE[1] + 1)
    out = leaky_relu_ints(y)
    assert int(out.min()) == -128 and int(out.max()) == 127
    assert out[y > 0].tolist() == y[y > 0].tolist()
    assert leaky_relu_ints(torch.tensor([-4, -5, -12, -13])).tolist() == [0, -1, -1, -2]  # ties up


def test_stack_steps_identical_on_every_kernel():
    """Three adaptation steps of a v6-shaped stack (3 -> 16 -> 16 -> 20): same outputs and weights everywhere."""
    generator = torch.Generator().manual_seed(7)
    widths = [3, 16, 16, 20]
    weights = [(torch.randn(b, a, 3, 3, generator=generator, dtype=torch.float64) * (2 / (9 * a)) ** 0.5,
                torch.randn(b, generator=generator, dtype=torch.float64) * 0.1) for a, b in zip(widths, widths[1:])]
    pixels = torch.randint(0, 256, (4, 3, 12, 12), generator=generator)
    target = torch.randint(-3000, 3000, (4, 12, 12, 20), generator=generator)
    results = {}
    for name, kernel in KERNELS.items():
        stack = IntConvStack.from_float(weights, (pixels - 128) / 64, input_exponent=-6)
        optimizer = ExactAdam(stack.parameters(), 1e-3)
        outputs = []
        for _ in range(3):
            optimizer.zero_grad()
            out = stack.step_ints((pixels - 128).permute(0, 2, 3, 1), lambda o: Fixed(o.ints - target, o.exponent),
                                  kernel)
            optimizer.step()
            outputs.append(out.ints)
        results[name] = (outputs, [p.detach().clone() for p in stack.parameters()])
    reference = results.pop("float64")
    for outputs, parameters in results.values():
        assert all(torch.equal(a, b) for a, b in zip(outputs, reference[0]))
        assert all(torch.equal(a, b) for a, b in zip(parameters, reference[1]))
    assert not torch.equal(reference[0][0], reference[0][2])  # the steps changed the network


def test_framed_input_is_the_same_layer():
    generator = torch.Generator().manual_seed(5)
    for input_limbs in (1, 2):
        layer = _layer(generator, 5, 4, 1, True, input_limbs)
        x = torch.randint(*limb_range(8, input_limbs), (2, 6, 7, 5), generator=generator)
        framed = torch.nn.functional.pad(x, (0, 0, 1, 1, 1, 1))
        for kernel in KERNELS.values():
            assert torch.equal(layer.forward_ints(x, kernel)[0], layer.forward_ints(framed, kernel, framed=True)[0])


@pytest.mark.parametrize("wide", [False, True])
def test_stack_step_is_its_layers_composed(wide):
    """IntConvStack's fused step (framed inputs, masks folded into the leaky ReLU's gradient) against
    the layers called one by one, with the leaky ReLU written out as its definition; ``wide``: the
    first conv's weights in two 7-bit limbs and the last conv's input in two 8-bit limbs."""
    generator = torch.Generator().manual_seed(11)
    widths = [3, 10, 10, 7]
    weights = [(torch.randn(b, a, 3, 3, generator=generator, dtype=torch.float64) * (2 / (9 * a)) ** 0.5,
                torch.randn(b, generator=generator, dtype=torch.float64) * 0.1) for a, b in zip(widths, widths[1:])]
    pixels = torch.randint(0, 256, (3, 3, 9, 11), generator=generator)
    x0 = (pixels - 128).permute(0, 2, 3, 1)
    target = torch.randint(-3000, 3000, (3, 9, 11, 7), generator=generator)
    limbs = {"first_weight_limbs": 2, "last_input_limbs": 2} if wide else {}
    fused = IntConvStack.from_float(weights, (pixels - 128) / 64, input_exponent=-6, **limbs)
    composed = IntConvStack.from_float(weights, (pixels - 128) / 64, input_exponent=-6, **limbs)
    assert [c.weight_limbs for c in fused.convs] == [2 if wide else 1, 1, 1]
    assert [c.input_limbs for c in fused.convs] == [1, 1, 2 if wide else 1]
    output = fused.step_ints(x0, lambda o: Fixed(o.ints - target, o.exponent))
    assert torch.equal(fused.forward_ints(x0).ints, output.ints)

    x, saved, pre = x0, [], []
    for conv in composed.convs:
        y, memo = conv.forward_ints(x)
        saved.append(memo)
        pre.append(y)
        x = torch.where(y > 0, y, shift_round(y, 3))
    assert torch.equal(output.ints, y)
    grad = Fixed(y - target, output.exponent)
    for index in reversed(range(3)):
        grad = composed.convs[index].backward_ints(saved[index], grad, need_input=index > 0)
        if index:
            y = pre[index - 1].long()
            grad = Fixed(torch.where(y > 0, grad.ints.long() << 3, grad.ints.long()), grad.exponent - 3)
    for a, b in zip(fused.parameters(), composed.parameters()):
        assert torch.equal(a.grad, b.grad)
