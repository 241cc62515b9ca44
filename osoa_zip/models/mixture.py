"""The layout of a mixture's extra outputs, shared by the flow and the VAE.

A network that predicts one logistic (mean, log-scale) per value predicts a
mixture of K by appending, per extra component k = 1 .. K-1, three blocks of
equal height: a mean shift, a log-scale shift and a logit.  Component 0 is the
single logistic with logit 0, so zero extra rows give back the single-logistic
model exactly (a single-logistic checkpoint warm-starts the mixture).
"""
from __future__ import annotations

import math

import torch


def extra_outputs(components: int) -> int:
    """How many blocks a network appends for ``components`` logistics (0 for one)."""
    return 3 * (components - 1)


def mixture_components(mean: torch.Tensor, log_scale: torch.Tensor, extra: torch.Tensor, components: int,
                       pick, shift_gain: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(means, log_scales, logits) with the K components first.

    ``extra`` holds the appended blocks along dim 1; ``pick`` selects the rows of
    each block that belong to ``mean`` (e.g. one channel); mean shifts are
    multiplied by ``shift_gain`` (a power of two, so exact).
    """
    blocks = extra.chunk(extra_outputs(components), dim=1)
    return mixture_from_blocks(mean, log_scale, [block[:, pick] for block in blocks], components, shift_gain)


def mixture_from_blocks(mean: torch.Tensor, log_scale: torch.Tensor, blocks, components: int,
                        shift_gain: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``mixture_components`` from the extra blocks' rows that belong to ``mean``, already picked."""
    means, log_scales, logits = [mean], [log_scale], [torch.zeros_like(mean)]
    for k in range(components - 1):
        shift_mean, shift_log_scale, logit = blocks[3 * k:3 * k + 3]
        means.append(mean + (shift_mean if shift_gain == 1.0 else shift_mean * shift_gain))
        log_scales.append(log_scale + shift_log_scale)
        logits.append(logit)
    return torch.stack(means), torch.stack(log_scales), torch.stack(logits)


class _MixtureStack(torch.autograd.Function):
    """``mixture_from_blocks`` (shift gain 1) as one autograd node instead of 3 (K - 1) + 3.

    The forward runs the very operations of ``mixture_from_blocks``.  The backward gives each
    extra block its component's gradient, as the adds and stacks do, and ``mean`` and
    ``log_scale`` the sum of their components' gradients, which autograd accumulated node by
    node.  On the exact engine those gradients are the mixture NLL's, each tensor on one
    power-of-two grid with at most GRAD_BITS significant bits (fixed.quantize_gradient): the
    sum of K of them is exact, so it is the same float64 number, signed zeros included, in
    any order (an exact sum is rounded nowhere; it is -0.0 only when every term is).
    """

    @staticmethod
    def forward(ctx, mean, log_scale, *blocks):
        ctx.components = len(blocks) // 3 + 1
        return mixture_from_blocks(mean, log_scale, blocks, ctx.components)

    @staticmethod
    def backward(ctx, grad_means, grad_log_scales, grad_logits):
        components = ctx.components
        grads: list = [None] * (2 + 3 * (components - 1))
        # Each gradient's K components as views, taken in one operation (unbind) instead of one each.
        parts = [None if grad is None else grad.unbind(0) for grad in (grad_means, grad_log_scales, grad_logits)]
        for index in (0, 1):
            if parts[index] is not None and ctx.needs_input_grad[index]:
                total = parts[index][0]
                for k in range(1, components):
                    total = total + parts[index][k]
                grads[index] = total
        for k in range(1, components):
            for offset, components_of in enumerate(parts):
                if components_of is not None:
                    grads[2 + 3 * (k - 1) + offset] = components_of[k]
        return tuple(grads)


def mixture_stack(mean: torch.Tensor, log_scale: torch.Tensor, blocks, components: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``mixture_from_blocks(mean, log_scale, blocks, components)``, the same values and, on the
    exact engine (float64), the same gradients, through one autograd node (``_MixtureStack``)."""
    if mean.dtype != torch.float64 or not torch.is_grad_enabled() or not (
            mean.requires_grad or log_scale.requires_grad or any(block.requires_grad for block in blocks)):
        return mixture_from_blocks(mean, log_scale, blocks, components)
    return _MixtureStack.apply(mean, log_scale, *blocks)


class _OutputPieces(torch.autograd.Function):
    """Pieces of a network's output along dim 1, with one backward for all of them.

    Taking the pieces by indexing gives autograd one slice node per piece, each of
    whose backward passes allocates a zero tensor of the whole output and adds it
    to the others': tens of full-size passes per coupling.  Here the pieces' gradients
    are added into one zero tensor, piece by piece: the pieces are disjoint, so
    every element is 0.0 + its one gradient, as the sum of the padded tensors gives it.
    A small output (the coarse levels, where a pass costs less than an operation's
    overhead) takes the same values in three operations instead: the gradients side
    by side (zeros for a channel no piece has), put in channel order by one
    ``index_select``, plus 0.0 (which is all that adding into zeros changes: -0.0 -> +0.0).
    """

    @staticmethod
    def forward(ctx, output, pieces):
        ctx.pieces, ctx.shape, ctx.dtype = pieces, output.shape, output.dtype
        # Every piece's channels gathered by one index_select, then split into views: the values of
        # a clone per piece (two operations per piece, some thirty pieces per coupling).
        index, sizes = _piece_gather(pieces, output.shape[1])
        return output.index_select(1, index).split(sizes, dim=1)

    @staticmethod
    def backward(ctx, *grads):
        shape = ctx.shape
        if math.prod(shape) <= SMALL_OUTPUT:
            present = [(piece, grad) for piece, grad in zip(ctx.pieces, grads) if grad is not None]
            order, uncovered = _piece_order(tuple(piece for piece, _ in present), shape[1])
            parts = [grad for _, grad in present]
            if uncovered:
                parts.append(torch.zeros(shape[0], 1, *shape[2:], dtype=ctx.dtype))
            if parts:
                return torch.cat(parts, dim=1).index_select(1, order).add_(0.0), None
        grad = torch.zeros(shape, dtype=ctx.dtype)
        for piece, piece_grad in zip(ctx.pieces, grads):
            if piece_grad is not None:
                grad[:, piece] += piece_grad
        return grad, None


# Outputs of at most this many values take the index_select backward (measured on v7's
# 16-tile RGB couplings: 16 x 90 x 8 x 8 values 138 -> 117 us, 2 x 2 96 -> 12 us; at 16 x 16
# the loop was faster, 519 against 596 us).
SMALL_OUTPUT = 16 * 90 * 8 * 8
_PIECE_ORDER: dict[tuple, tuple[torch.Tensor, bool]] = {}
_PIECE_GATHER: dict[tuple, tuple[torch.Tensor, list[int]]] = {}


def _per_layout(cache: dict, pieces: tuple[slice, ...], size: int, build):
    """``build(pieces, size)``, kept in ``cache`` per layout of pieces (a few per model; bounded all the same)."""
    key = (size, *((piece.start, piece.stop, piece.step) for piece in pieces))
    cached = cache.get(key)
    if cached is None:
        cached = build(pieces, size)
        if len(cache) < 1024:
            cache[key] = cached
    return cached


def _piece_order(pieces: tuple[slice, ...], size: int) -> tuple[torch.Tensor, bool]:
    """(for each of ``size`` channels, its position among the pieces' channels side by side, or
    the one zero channel after them; whether any channel has no piece), cached per layout."""
    return _per_layout(_PIECE_ORDER, pieces, size, _build_piece_order)


def _build_piece_order(pieces: tuple[slice, ...], size: int) -> tuple[torch.Tensor, bool]:
    channels = [c for piece in pieces for c in range(*piece.indices(size))]
    order = torch.full((size,), len(channels), dtype=torch.int64)
    order[torch.tensor(channels, dtype=torch.int64)] = torch.arange(len(channels))
    return order, len(set(channels)) < size


def _piece_gather(pieces: tuple[slice, ...], size: int) -> tuple[torch.Tensor, list[int]]:
    """(the channels of ``pieces`` one after another, each piece's channel count), cached per layout."""
    return _per_layout(_PIECE_GATHER, pieces, size, _build_piece_gather)


def _build_piece_gather(pieces: tuple[slice, ...], size: int) -> tuple[torch.Tensor, list[int]]:
    channels = [list(range(*piece.indices(size))) for piece in pieces]
    return torch.tensor([c for part in channels for c in part], dtype=torch.int64), [len(part) for part in channels]


def output_pieces(output: torch.Tensor, pieces: list[slice]) -> list[torch.Tensor]:
    """``[output[:, piece] for piece in pieces]`` for pieces that do not overlap (one backward node)."""
    if not output.requires_grad or not torch.is_grad_enabled():
        return [output[:, piece] for piece in pieces]
    return list(_OutputPieces.apply(output, pieces))
