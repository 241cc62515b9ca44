"""A whole exact ConvStack as one autograd function: the fast float64 path.

``ConvStack`` in layers.py states the computation one module at a time
(conv -> activation grid -> leaky ReLU -> activation grid -> ... -> conv ->
activation grid).  This module computes exactly the same numbers, forward
and backward, with fewer passes over memory:

* Layout.  Activations live channel-major on a zero-framed grid: a
  (C, margin + B*(H+1)*(W+1) + margin) tensor whose frame (one zero row and
  column per image, shared with the next image) and margins are zero.  A 3x3
  same-padded convolution is then nine matrix products, one per tap, each of
  the (Co x Ci) tap weights with a *shifted window* of that tensor (a
  strided view, no im2col copy), accumulated into the output.  The frame of
  the output is cleared, which makes it the zero padding of the
  next layer.  torch's float64 conv2d on CPU has no oneDNN kernel; it copies
  an im2col matrix per image, which costs more than these products.
* Fusion.  Forward and backward of all layers run in one function, with the
  elementwise grid roundings done in place and the gradient of each layer
  computed directly (no autograd graph of a dozen nodes per layer).

Why the numbers are identical (not just close):

* Every sum is exact.  Weights, activations and gradients are on the grids
  of fixed.py and ``check_conv_bounds`` is applied with the same arguments
  as ExactConv2d, so every partial sum of every product -- whatever the
  grouping into taps, the blocking of the BLAS kernel or the thread count --
  is an exactly representable float64.  Zeros from the frame add nothing.
* Every elementwise step is the same IEEE operation on the same value as in
  the module path: clamp, *2**8, floor, /2**8 (in place instead of out of
  place); torch's own leaky_relu and leaky_relu_backward; ``* inside`` masks
  and ``quantize_gradient`` as in _QuantizeActivation.backward.  A gradient
  tensor's per-tensor scale comes from its maximum magnitude, which the zero
  frame does not change.
* One step of the module path is left out because it is the identity: the
  clamp (and its gradient mask) of the activation grid applied *after* the
  leaky ReLU.  Its input is leaky_relu of a value already clamped to
  [-ACT_LIMIT, ACT_LIMIT], so it lies in [-ACT_LIMIT/8, ACT_LIMIT], where the
  clamp returns its input and the mask is all ones (x * 1.0 == x).

The only possible difference is the sign of an exact zero in a gradient sum,
which cannot reach the weights: Adam's moments start at +0 and
+0 + (-0) == +0.  tests/test_exact_stack.py checks outputs and gradients
against the module path bit for bit.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .fixed import ACT_FRAC_BITS, ACT_LIMIT, check_conv_bounds, quantize_gradient, quantize_weight

_ACT_SCALE = float(2 ** ACT_FRAC_BITS)
# Products are done in blocks of this many grid positions (columns): measured on
# a 2-core AVX2 machine, blocks of 2048-4096 beat whole-batch products by up
# to 1.7x (operands stay in cache across the nine taps).  Sums stay exact.
COLUMN_BLOCK = 4096
# The products of a block at least this wide run on GEMM_THREADS OpenMP threads
# (set_gemm_threads); everything else, the elementwise passes included, on the
# caller's thread count.  Measured on the 2-core AVX2 machine with one thread
# elsewhere: float64 products of 48 x 48 taps with 1536-4096 columns ran 1.5-2.0x
# faster on two threads, while at 1024 columns two gained nothing and at 256 they
# took 2.3x longer -- which is why two threads for every operation lost overall.
# The thread count cannot change a bit: every partial sum is exact.
PARALLEL_COLUMNS = 1536
_gemm_threads = 1


def set_gemm_threads(count: int) -> None:
    """Threads for the matrix products of wide blocks (1: the caller's count, always)."""
    global _gemm_threads
    _gemm_threads = max(1, int(count))


def gemm_threads() -> int:
    """The current set_gemm_threads count."""
    return _gemm_threads


class _WideBlockThreads:
    """Within: torch runs on _gemm_threads threads if ``columns`` is wide enough."""

    __slots__ = ("columns", "previous")

    def __init__(self, columns: int) -> None:
        self.columns, self.previous = columns, None

    def __enter__(self) -> None:
        if _gemm_threads > 1 and self.columns >= PARALLEL_COLUMNS:
            self.previous = torch.get_num_threads()
            torch.set_num_threads(_gemm_threads)

    def __exit__(self, *exception) -> None:
        if self.previous is not None:
            torch.set_num_threads(self.previous)


class _Grid:
    """Geometry of the zero-framed, channel-major layout of a B x C x H x W batch.

    Each image is stored as H rows of W + 1 positions, the last one zero,
    followed by one zero row, so that neighbouring images share their
    frame: in the flat layout the zero column ending row r is also the left
    neighbour of row r + 1, and an image's zero row is the top neighbour of
    the next image.  Zero margins before and after hold the frame of the
    first image's top row and give every tap's shifted window room.
    """

    def __init__(self, batch: int, height: int, width: int) -> None:
        self.batch, self.height, self.width = batch, height, width
        self.row = width + 1
        self.margin = self.row + 1
        self.count = batch * (height + 1) * self.row
        # Tap (ky, kx) of a 3x3 kernel reads the input shifted by this many positions.
        self.shifts = [(ky - 1) * self.row + (kx - 1) for ky in range(3) for kx in range(3)]

    def new(self, channels: int, like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(channels, 2 * self.margin + self.count)

    def core(self, t: torch.Tensor) -> torch.Tensor:
        """All grid positions (frame included), without the margins: a C x count view."""
        return t[:, self.margin:self.margin + self.count]

    def window(self, t: torch.Tensor, shift: int) -> torch.Tensor:
        return t[:, self.margin + shift:self.margin + shift + self.count]

    def _framed(self, t: torch.Tensor) -> torch.Tensor:
        return self.core(t).view(t.shape[0], self.batch, self.height + 1, self.row)

    def interior(self, t: torch.Tensor) -> torch.Tensor:
        """The B x H x W positions inside the frame, as a C x B x H x W view."""
        return self._framed(t)[:, :, :-1, :-1]

    def clear_frame(self, t: torch.Tensor) -> None:
        framed = self._framed(t)
        framed[:, :, -1].zero_()
        framed[:, :, :, -1].zero_()

    def put(self, x: torch.Tensor) -> torch.Tensor:
        """B x C x H x W -> grid."""
        t = self.new(x.shape[1], x)
        self.interior(t).copy_(x.transpose(0, 1))
        return t

    def take(self, t: torch.Tensor) -> torch.Tensor:
        """grid -> B x C x H x W (contiguous)."""
        return self.interior(t).transpose(0, 1).contiguous()


def _taps(weight: torch.Tensor) -> list[torch.Tensor]:
    """The nine Co x Ci matrices of a Co x Ci x 3 x 3 kernel, in _Grid.shifts order (contiguous)."""
    return list(weight.permute(2, 3, 0, 1).reshape(9, weight.shape[0], weight.shape[1]).contiguous())


def _column_blocks(grid: _Grid):
    """Column ranges of the grid small enough for one block of every operand to stay in cache."""
    return [(start, min(start + COLUMN_BLOCK, grid.count)) for start in range(0, grid.count, COLUMN_BLOCK)]


def _conv(grid: _Grid, x: torch.Tensor, taps: list[torch.Tensor], bias: torch.Tensor) -> torch.Tensor:
    """Same-padded 3x3 convolution on the grid (exact sums, any order); frame cleared."""
    y = grid.new(taps[0].shape[0], x)
    core = grid.core(y)
    core.copy_(bias[:, None].expand_as(core))
    for start, end in _column_blocks(grid):
        block = core[:, start:end]
        with _WideBlockThreads(end - start):
            for tap, shift in zip(taps, grid.shifts):
                block.addmm_(tap, grid.window(x, shift)[:, start:end])
    grid.clear_frame(y)
    return y


def _conv_input_gradient(grid: _Grid, g: torch.Tensor, taps: list[torch.Tensor], channels: int) -> torch.Tensor:
    """Gradient with respect to the conv's input grid (exact sums); frame cleared."""
    below = grid.new(channels, g)
    core = grid.core(below)
    for start, end in _column_blocks(grid):
        block = core[:, start:end]
        with _WideBlockThreads(end - start):
            for tap, shift in zip(taps, grid.shifts):
                block.addmm_(tap.T, grid.window(g, -shift)[:, start:end])
    grid.clear_frame(below)
    return below


def _conv_weight_gradient(grid: _Grid, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gradient with respect to the Co x Ci x 3 x 3 kernel (exact sums over all positions)."""
    core = grid.core(g)
    taps = g.new_zeros(9, g.shape[0], x.shape[0])
    for start, end in _column_blocks(grid):
        block = core[:, start:end]
        with _WideBlockThreads(end - start):
            for tap, shift in zip(taps, grid.shifts):
                tap.addmm_(block, grid.window(x, shift)[:, start:end].T)
    return taps.permute(1, 2, 0).reshape(g.shape[0], x.shape[0], 3, 3)


def _to_activation_grid(y: torch.Tensor) -> torch.Tensor:
    """fixed.quantize_activation's forward, in place on a new tensor."""
    a = torch.clamp(y, -ACT_LIMIT, ACT_LIMIT)
    return a.mul_(_ACT_SCALE).floor_().div_(_ACT_SCALE)


def _inside(y: torch.Tensor) -> torch.Tensor:
    return (y >= -ACT_LIMIT) & (y <= ACT_LIMIT)


class ExactStack(torch.autograd.Function):
    """forward(x, slope, w0, b0, w1, b1, ...) -> the ConvStack output, B x Co x H x W."""

    @staticmethod
    def forward(ctx, x, slope, *parameters):
        grid = _Grid(x.shape[0], x.shape[2], x.shape[3])
        positions = x.shape[0] * x.shape[2] * x.shape[3]
        layers = len(parameters) // 2
        inputs, outputs, rectified_inputs, all_taps = [grid.put(x)], [], [], []
        for index in range(layers):
            weight, bias = parameters[2 * index], parameters[2 * index + 1]
            check_conv_bounds(weight[0].numel(), positions)
            taps = _taps(quantize_weight(weight))
            y = _conv(grid, inputs[-1], taps, quantize_weight(bias))
            a = _to_activation_grid(y)
            outputs.append(y)
            all_taps.append(taps)
            if index < layers - 1:
                rectified_inputs.append(a)
                # The activation grid's clamp is the identity here (see the module docstring).
                inputs.append(F.leaky_relu(a, slope).mul_(_ACT_SCALE).floor_().div_(_ACT_SCALE))
            else:
                result = grid.take(a)
        ctx.grid, ctx.slope, ctx.all_taps = grid, slope, all_taps
        ctx.save_for_backward(*inputs, *outputs, *rectified_inputs)
        return result

    @staticmethod
    def backward(ctx, grad):
        grid, slope, all_taps = ctx.grid, ctx.slope, ctx.all_taps
        layers = len(all_taps)
        saved = ctx.saved_tensors
        inputs, outputs, rectified_inputs = saved[:layers], saved[layers:2 * layers], saved[2 * layers:]
        needs = ctx.needs_input_grad  # (x, slope, w0, b0, w1, b1, ...)
        grads = [None] * (2 * layers)
        # Gradient with respect to outputs[index] (the last conv's output first).
        g = quantize_gradient(grid.put(grad) * _inside(outputs[-1]))
        for index in reversed(range(layers)):
            if needs[2 + 2 * index]:
                grads[2 * index] = _conv_weight_gradient(grid, g, inputs[index])
            if needs[3 + 2 * index]:
                grads[2 * index + 1] = grid.core(g).sum(dim=1)
            if index == 0 or not any(needs[2:2 + 2 * index]):
                break  # nothing below needs a gradient (the stack's input never does)
            below = _conv_input_gradient(grid, g, all_taps[index], inputs[index].shape[0])
            # Back through the activation grid after the leaky ReLU (mask all ones), the
            # leaky ReLU and the activation grid on the previous conv's output.
            below = quantize_gradient(below)
            below = torch.ops.aten.leaky_relu_backward(below, rectified_inputs[index - 1], slope, False)
            g = quantize_gradient(below * _inside(outputs[index - 1]))
        return (None, None, *grads)
