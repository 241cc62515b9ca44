"""The layout of a mixture's extra outputs, shared by the flow and the VAE.

A network that predicts one logistic (mean, log-scale) per value predicts a
mixture of K by appending, per extra component k = 1 .. K-1, three blocks of
equal height: a mean shift, a log-scale shift and a logit.  Component 0 is the
single logistic with logit 0, so zero extra rows give back the single-logistic
model exactly (a single-logistic checkpoint warm-starts the mixture).
"""
from __future__ import annotations

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


class _OutputPieces(torch.autograd.Function):
    """Pieces of a network's output along dim 1, with one backward for all of them.

    Taking the pieces by indexing gives autograd one slice node per piece, each of
    whose backward passes allocates a zero tensor of the whole output and adds it
    to the others': tens of full-size passes per coupling.  Here the pieces'
    gradients are written into one zero tensor by one ``index_copy_`` (the pieces
    are disjoint, so each channel gets at most one gradient), then 0.0 is added to
    every element: 0.0 + g is what adding each piece's gradient into zeros gave,
    bit for bit (it differs from g only for g = -0.0, which becomes +0.0).
    """

    @staticmethod
    def forward(ctx, output, pieces):
        ctx.pieces, ctx.shape, ctx.dtype = pieces, output.shape, output.dtype
        return tuple(output[:, piece].clone() for piece in pieces)

    @staticmethod
    def backward(ctx, *grads):
        grad = torch.zeros(ctx.shape, dtype=ctx.dtype)
        present = [(piece, piece_grad) for piece, piece_grad in zip(ctx.pieces, grads) if piece_grad is not None]
        if present:
            index = _piece_index(tuple(piece for piece, _ in present), ctx.shape[1])
            grad.index_copy_(1, index, torch.cat([piece_grad for _, piece_grad in present], dim=1))
            grad.add_(0.0)
        return grad, None


_PIECE_INDEX: dict[tuple, torch.Tensor] = {}


def _piece_index(pieces: tuple[slice, ...], size: int) -> torch.Tensor:
    """The channels of ``pieces`` (slices of a dim of ``size``), in order, as one index (cached)."""
    key = (size, *((piece.start, piece.stop, piece.step) for piece in pieces))
    index = _PIECE_INDEX.get(key)
    if index is None:
        index = torch.tensor([c for piece in pieces for c in range(*piece.indices(size))], dtype=torch.int64)
        if len(_PIECE_INDEX) < 1024:  # a few layouts per model; bounded all the same
            _PIECE_INDEX[key] = index
    return index


def output_pieces(output: torch.Tensor, pieces: list[slice]) -> list[torch.Tensor]:
    """``[output[:, piece] for piece in pieces]`` for pieces that do not overlap (one backward node)."""
    if not output.requires_grad or not torch.is_grad_enabled():
        return [output[:, piece] for piece in pieces]
    return list(_OutputPieces.apply(output, pieces))
