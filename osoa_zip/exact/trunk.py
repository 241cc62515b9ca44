"""Reusing a frozen trunk's activations between passes over the same batch.

A coupling network's input is built from pixel values alone, never from a
network's outputs, so every pass over one batch gives each engine-2 stack the
same input.  When only the last conv of each stack adapts (the parameter
selection "last": grey networks by default, every network at levels -2 to -4),
the convs below it (the stack's *trunk*) keep θ0's weights, and their
activations are the same in every pass over the batch.  The adapter makes
several such passes: on the encoder the adapted pass and the guard's θ0 pass,
on the decoder the decoding pass (θ0's for a FLAG_PRETRAINED batch) and the
update's forward pass, and on both every step after the first.  A ``TrunkMemo``
records the trunk activations of the first pass and lets the later ones start
each stack at its last conv.

Correct by checking, never by assumption: a stack reuses a recorded pass only
for the convs whose arithmetic is recorded as identical, starting from an
input that is exactly the recorded one:

* the stack's input: the same dtype, shape and values (``torch.equal``), and
  the recorded tensor not changed in place since (its version counter);
* each skipped conv: the same prepared integer weights and bias offsets
  (IntConv3x3.prepared), the same weight exponents, input and output
  exponents, output range and limb counts, and the next conv's input limbs
  (how its output is framed).  Nothing else enters a conv's integers: every
  kernel gives the same ones (exact/kernels.py).

The longest such prefix is skipped, never the last conv (it makes the output
and what its backward needs), and never a conv whose gradient the pass wants
(IntConvStack.backward stops below the lowest conv with a wanted gradient, so
the skipped convs' saved tensors are never asked for).  A miss costs only the
comparisons and the recorded tensors' memory; it never changes a bit.

A memo is one batch's (the adapter makes one per batch and drops it after
the update), and it is active only inside ``with memo.active():`` and only for
the thread that entered it (a thread-local, which no other thread sees:
segments coded side by side and the adapter's helper thread never meet it).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator

import torch

_active = threading.local()


def active_trunk_memo() -> TrunkMemo | None:
    """The memo this thread's stacks record into and resume from, or None."""
    return getattr(_active, "memo", None)


def sharing(memo: TrunkMemo | None):
    """``memo.active()``, or nothing when None (a batch with a single pass has nothing to share)."""
    return nullcontext() if memo is None else memo.active()


@dataclass(frozen=True)
class _Layer:
    """What fixes a trunk conv's integers: its prepared weights and its grids."""

    weights: torch.Tensor  # IntConv3x3.prepared().weights (int32, on the weight grid)
    offset: torch.Tensor  # prepared().offset: the bias in accumulator units + the rounding step
    weight_exponents: torch.Tensor
    grids: tuple  # (input exponent, output exponent, output range, input limbs, weight limbs, next input limbs)


@dataclass(frozen=True)
class _Recorded:
    """One stack pass: its input and, per trunk conv, the arithmetic and the next conv's framed input."""

    input: torch.Tensor
    version: int  # input._version when recorded
    layers: tuple[_Layer, ...]  # convs[:-1]
    inputs: tuple[torch.Tensor, ...]  # inputs[i]: conv i + 1's framed int8 input (limbs stacked along the batch)
    last_patches: torch.Tensor | None = None  # the last conv's im2col of inputs[-1], if the pass kept it


def _layer(conv, following) -> _Layer:
    prepared = conv.prepared()
    grids = (conv.input_exponent, conv.output_exponent, conv.output_range, conv.input_limbs, conv.weight_limbs,
             following.input_limbs)
    return _Layer(prepared.weights, prepared.offset, conv.weight_exponents.clone(), grids)


def _same(layer: _Layer, recorded: _Layer) -> bool:
    return (layer.grids == recorded.grids
            and (layer.weights is recorded.weights
                 or (torch.equal(layer.weights, recorded.weights) and torch.equal(layer.offset, recorded.offset)))
            and torch.equal(layer.weight_exponents, recorded.weight_exponents))


class TrunkMemo:
    """One batch's trunk activations, recorded by one pass and reused by later ones (see the module)."""

    def __init__(self) -> None:
        self._recorded: dict[tuple, list[_Recorded]] = {}
        self.hits = 0  # stack passes that started above their first conv
        self.skipped_convs = 0  # convs those passes did not run
        self.misses = 0  # stack passes that ran from their input (and were recorded)
        self.shared_patches = 0  # last convs that read a recorded pass's patches instead of their own im2col

    @contextmanager
    def active(self) -> Iterator[TrunkMemo]:
        """Make this the calling thread's memo for the passes inside (the previous one after)."""
        previous = active_trunk_memo()
        _active.memo = self
        try:
            yield self
        finally:
            _active.memo = previous

    @staticmethod
    def _key(stack, x: torch.Tensor) -> tuple:
        return x.dtype, tuple(x.shape), len(stack.convs)

    def resume(self, stack, x: torch.Tensor, limit: int) -> tuple[int, torch.Tensor | None]:
        """(the first conv to run, its framed input) for ``stack`` on input ``x``: (0, None) if no
        recorded pass fits.  At most ``limit`` convs are skipped (the lowest conv whose gradient
        is wanted, at most the last conv's index)."""
        best, source = 0, None
        candidates = self._recorded.get(self._key(stack, x), ()) if limit > 0 else ()
        layers: list[_Layer] = []
        for recorded in candidates:
            if recorded.input._version != recorded.version or not torch.equal(recorded.input, x):
                continue
            depth = 0
            while depth < limit:
                if depth == len(layers):
                    layers.append(_layer(stack.convs[depth], stack.convs[depth + 1]))
                if not _same(layers[depth], recorded.layers[depth]):
                    break
                depth += 1
            if depth > best:
                best, source = depth, recorded.inputs[depth - 1]
                if best == limit:
                    break
        if best:
            self.hits += 1
            self.skipped_convs += best
        return best, source

    def patches_of(self, stack, x: torch.Tensor, source: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """The last conv's patches of ``source`` (a framed input ``resume`` returned for the last
        conv) in ``dtype`` (the kernel's operand type), as the pass that recorded it kept them, or
        None.  The patches depend on that input alone, so any later pass over it, on any weights,
        may read them (and must not write them)."""
        for recorded in self._recorded.get(self._key(stack, x), ()):
            patches = recorded.last_patches
            if recorded.inputs and recorded.inputs[-1] is source and patches is not None and patches.dtype == dtype:
                self.shared_patches += 1
                return patches
        return None

    def record(self, stack, x: torch.Tensor, inputs: list[torch.Tensor], last_patches: torch.Tensor | None = None
               ) -> None:
        """Keep a stack pass that ran from its input: ``inputs`` are the framed inputs of its convs after the first,
        ``last_patches`` the last conv's im2col of ``inputs[-1]`` (or None)."""
        convs = stack.convs
        if len(inputs) != len(convs) - 1:
            raise ValueError("a stack pass is recorded with every conv's input")
        self.misses += 1
        layers = tuple(_layer(conv, following) for conv, following in zip(convs[:-1], convs[1:]))
        x = x.detach()
        self._recorded.setdefault(self._key(stack, x), []).append(
            _Recorded(x, x._version, layers, tuple(inputs), last_patches))
