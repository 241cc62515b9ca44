"""The discretized logistic, computed from integer tables shipped with a model.

Why tables: exp/log/sigmoid come from libm or SIMD approximations that differ
between machines in the last bit.  The decoder must rebuild the same
probability tables and replay the same gradients, so every nonlinear value
here is a table lookup plus exact integer interpolation; the only other
operations are single correctly rounded IEEE operations, elementwise.

Scale is parametrised by its logarithm ``log_scale`` on the activation grid;
``inv_scale`` holds round(2**16 * exp(-log_scale)) for every grid point.
The logistic CDF is tabulated as round(2**24 * sigmoid(u)) on a 2**-6 grid.

Edge bins (optional ``lower``/``upper`` bounds per element, as in PixelCNN++):
a value known to lie in [lower, upper] gets, at a bound, the whole tail beyond
it: P(lower) = CDF(lower + 1/2), P(upper) = 1 - CDF(upper - 1/2).  Pixels are
in [0, 255], so a flow's residual z = x - offset is in [-offset, 255 - offset];
without the bounds the mass below 0 and above 255 is wasted, which costs
dark or saturated pixels most (Fashion-MNIST: 15% of its bits).

Mixtures (``mixture_nll_bits``): K logistics with weights softmax(logits), as
in PixelCNN++.  The weights need exp, so a mixture model ships one more table,
``exp_q16`` = round(2**16 * exp(d)) (at least 1) for d = -EXP_RANGE .. 0 on the
activation grid; a component's weight is the entry of its logit minus the
largest logit.  A bin's mass is then sum_k e_k * mass_k out of
2**24 * sum_k e_k: integers below 2**44, so exact in float64.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from . import mixture_kernels
from .fixed import ACT_FRAC_BITS, quantize_gradient
from .grid import CDF_BITS

CDF_ONE = float(2 ** CDF_BITS)
CDF_STEP_BITS = 6
CDF_RANGE = 16  # sigmoid tabulated on [-CDF_RANGE, CDF_RANGE]
INV_SCALE_BITS = 16
LOG_SCALE_MIN = -2.0
LOG_SCALE_MAX = 5.0
EXP_BITS = 16
EXP_RANGE = 16  # exp tabulated on [-EXP_RANGE, 0]; a logit further below the largest weighs 1/2**16
# Below this probability the table's resolution is too coarse for a gradient;
# the logistic's asymptotic tail gradient is used instead.
_TAIL_PROBABILITY = 2.0 ** -16


@dataclass(frozen=True, eq=False)
class LogisticTables:
    """Integer tables, stored as integer-valued float64 tensors.

    Compared and hashed by identity (eq=False), so that derived tables (the
    coder's windows) can be cached per instance.
    """

    cdf: torch.Tensor        # round(2**24 * sigmoid(u)), u = -16 .. 16 step 2**-6
    inv_scale: torch.Tensor  # round(2**16 * exp(-l)), l = LOG_SCALE_MIN .. MAX step 2**-8
    exp: torch.Tensor | None = None  # max(1, round(2**16 * exp(d))), d = -EXP_RANGE .. 0 step 2**-8 (mixtures)

    @staticmethod
    def build(mixture: bool = False) -> dict[str, torch.Tensor]:
        """Compute the tables once, at export time; they ship with the model.

        ``mixture`` adds the exp table that mixture weights need (only models
        with mixtures carry it, so older exports stay byte for byte the same)."""
        n_cdf = 2 * CDF_RANGE * 2 ** CDF_STEP_BITS + 1
        cdf = [round(CDF_ONE / (1.0 + math.exp(-(i / 2 ** CDF_STEP_BITS - CDF_RANGE))))
               for i in range(n_cdf)]
        n_scale = int((LOG_SCALE_MAX - LOG_SCALE_MIN) * 2 ** ACT_FRAC_BITS) + 1
        inv = [round(2 ** INV_SCALE_BITS * math.exp(-(LOG_SCALE_MIN + i / 2 ** ACT_FRAC_BITS)))
               for i in range(n_scale)]
        tables = {"cdf_q24": torch.tensor(cdf, dtype=torch.int64),
                  "inv_scale_q16": torch.tensor(inv, dtype=torch.int64)}
        if mixture:
            n_exp = EXP_RANGE * 2 ** ACT_FRAC_BITS + 1
            tables["exp_q16"] = torch.tensor(
                [max(1, round(2 ** EXP_BITS * math.exp(i / 2 ** ACT_FRAC_BITS - EXP_RANGE))) for i in range(n_exp)],
                dtype=torch.int64)
        return tables

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "LogisticTables":
        exp = tensors.get("exp_q16")
        return cls(cdf=tensors["cdf_q24"].to(torch.float64),
                   inv_scale=tensors["inv_scale_q16"].to(torch.float64) / 2 ** INV_SCALE_BITS,
                   exp=None if exp is None else exp.to(torch.float64))

    def mixture_weights(self, logits: torch.Tensor) -> torch.Tensor:
        """Unnormalised integer weights e_k of logits (K, ...) on the activation grid, K first."""
        if self.exp is None:
            raise ValueError("these tables have no exp table (the model has no mixtures)")
        largest = logits[0]
        for k in range(1, logits.shape[0]):  # elementwise: faster than a reduction over a short dim
            largest = torch.maximum(largest, logits[k])
        relative = torch.clamp(logits - largest, -EXP_RANGE, 0.0)
        return self.exp[((relative + EXP_RANGE) * 2 ** ACT_FRAC_BITS).long()]

    def scale_index(self, log_scale: torch.Tensor) -> torch.Tensor:
        """Row of inv_scale for a log-scale on the activation grid (clamped to the table)."""
        return (torch.clamp(log_scale, LOG_SCALE_MIN, LOG_SCALE_MAX) - LOG_SCALE_MIN) * 2 ** ACT_FRAC_BITS

    def inverse_scale(self, log_scale: torch.Tensor) -> torch.Tensor:
        """exp(-log_scale) on the 2**-16 grid; log_scale must be on the activation grid."""
        return self.inv_scale[self.scale_index(log_scale).long()]

    def cdf_q24(self, u: torch.Tensor) -> torch.Tensor:
        """2**24 * sigmoid(u), floored, by exact linear interpolation of the table."""
        position = torch.clamp((u + CDF_RANGE) * 2 ** CDF_STEP_BITS, 0, self.cdf.numel() - 1)
        index = torch.clamp(torch.floor(position), max=self.cdf.numel() - 2)
        fraction = position - index
        lower = self.cdf[index.long()]
        upper = self.cdf[index.long() + 1]
        return lower + torch.floor((upper - lower) * fraction)


def bin_probability_q24(tables: LogisticTables, value: torch.Tensor, mean: torch.Tensor,
                        inv_scale: torch.Tensor, lower: torch.Tensor | None = None,
                        upper: torch.Tensor | None = None):
    """Integer mass (out of 2**24, at least 1) of the bin [value-1/2, value+1/2]
    (with bounds: a bin at a bound extends to infinity beyond it).

    Returns (mass, u_plus, u_minus, cdf_plus, cdf_minus) for gradient use.
    """
    delta = value - mean
    u_plus = (delta + 0.5) * inv_scale
    u_minus = (delta - 0.5) * inv_scale
    cdf_plus = tables.cdf_q24(u_plus)
    cdf_minus = tables.cdf_q24(u_minus)
    if lower is not None:
        cdf_minus = torch.where(value <= lower, 0.0, cdf_minus)
        cdf_plus = torch.where(value >= upper, CDF_ONE, cdf_plus)
    mass = torch.clamp(cdf_plus - cdf_minus, min=1.0)
    return mass, u_plus, u_minus, cdf_plus, cdf_minus


class _ExactNLL(torch.autograd.Function):
    """Negative log-likelihood in bits, with a replayable backward pass."""

    @staticmethod
    def forward(ctx, value, mean, log_scale, tables, lower, upper):
        inv_scale = tables.inverse_scale(log_scale)
        mass, u_plus, u_minus, cdf_plus, cdf_minus = bin_probability_q24(tables, value, mean, inv_scale,
                                                                          lower, upper)
        ctx.edges = lower is not None
        saved = (value, mean, log_scale, inv_scale, mass, u_plus, u_minus, cdf_plus, cdf_minus)
        ctx.save_for_backward(*saved, *((lower, upper) if ctx.edges else ()))
        # Reported only (statistics), never replayed: log2 may differ in the last bit.
        return CDF_BITS - torch.log2(mass)

    @staticmethod
    def backward(ctx, grad_out):
        value, mean, log_scale, inv_scale, mass, u_plus, u_minus, cdf_plus, cdf_minus = ctx.saved_tensors[:9]
        bounds = ctx.saved_tensors[9:] if ctx.edges else ()
        grad_mean, grad_log_scale = _component_gradients(value, mean, inv_scale, mass, u_plus, u_minus,
                                                         cdf_plus, cdf_minus, bounds)
        inside = (log_scale >= LOG_SCALE_MIN) & (log_scale <= LOG_SCALE_MAX)
        # Gradients above are in nats; bits differ by a constant factor that
        # Adam ignores, so no log(2) enters the replayed path.
        grad_mean = quantize_gradient(grad_mean * grad_out)
        grad_log_scale = quantize_gradient(grad_log_scale * inside * grad_out)
        return -grad_mean, grad_mean, grad_log_scale, None, None, None


def _component_gradients(value, mean, inv_scale, mass, u_plus, u_minus, cdf_plus, cdf_minus, bounds):
    """d(-ln P)/d mean and d(-ln P)/d log_scale of one logistic's bin (nats, unquantized)."""
    p_plus = cdf_plus / CDF_ONE
    p_minus = cdf_minus / CDF_ONE
    density_plus = p_plus * (1.0 - p_plus)
    density_minus = p_minus * (1.0 - p_minus)
    probability = mass / CDF_ONE
    grad_mean = inv_scale * (density_plus - density_minus) / probability
    grad_log_scale = (u_plus * density_plus - u_minus * density_minus) / probability
    # Far tails: NLL ~ |delta|/s + log s.
    delta = value - mean
    tail = probability < _TAIL_PROBABILITY
    grad_mean = torch.where(tail, -torch.sign(delta) * inv_scale, grad_mean)
    grad_log_scale = torch.where(tail, 1.0 - torch.abs(delta) * inv_scale, grad_log_scale)
    if bounds:
        # An edge bin's far tail is one-sided: NLL ~ |delta|/s, no log s.  (Its
        # in-range gradient needs no change: the folded side's density is 0.)
        lower, upper = bounds
        edge_tail = tail & ((value <= lower) | (value >= upper))
        grad_log_scale = torch.where(edge_tail, -torch.abs(delta) * inv_scale, grad_log_scale)
    return grad_mean, grad_log_scale


def _responsibilities(value, means, inv_scale, mass, weights, joint):
    """Each component's share of a bin's mass, e_k mass_k / sum_j e_j mass_j.

    A component in its far tail (mass below _TAIL_PROBABILITY) has a mass the
    tables cannot resolve (often the floor of 1), so it gets no share while
    another component can explain the value; when none can, the one nearest
    in units of its scale takes it all, as the smooth log-sum-exp would.
    """
    tail = mass < _TAIL_PROBABILITY * CDF_ONE
    share = torch.where(tail, 0.0, weights * mass / joint)
    lost = tail.all(dim=0)
    if not bool(lost.any()):
        return share
    distance = torch.abs(value[lost].unsqueeze(0) - means[:, lost]) * inv_scale[:, lost]
    best, nearest = distance[0], torch.zeros_like(distance[0])
    for k in range(1, distance.shape[0]):  # the first of equals wins, on every machine
        closer = distance[k] < best
        best, nearest = torch.where(closer, distance[k], best), torch.where(closer, float(k), nearest)
    components = torch.arange(distance.shape[0], dtype=share.dtype).unsqueeze(1)
    share[:, lost] = (components == nearest.unsqueeze(0)).to(share.dtype)
    return share


class _ExactMixtureNLL(torch.autograd.Function):
    """A mixture's NLL in bits; means, log-scales and logits have the K components first.

    The gradients are the single logistic's, weighted by each component's
    responsibility r_k (``_responsibilities``), and w_k - r_k for the logits
    (w_k = e_k / sum_j e_j): elementwise IEEE operations, and sums over the K
    components in a fixed order, so they replay bit for bit.
    """

    @staticmethod
    def forward(ctx, value, means, log_scales, logits, tables, lower, upper):
        operands = _flat_operands(value, means, log_scales, logits, tables, lower, upper)
        compiled = _compiled_forward(operands, value.shape)
        if compiled is not None:
            joint, total = compiled
            ctx.compiled, ctx.tables, ctx.edges = True, tables, lower is not None
            # The backward's numpy views of the same tensors (saved below, so autograd still
            # refuses a backward after any of them changed in place).
            ctx.operands = operands
            ctx.save_for_backward(value, means, log_scales, logits, *((lower, upper) if ctx.edges else ()))
            return CDF_BITS + torch.log2(total) - torch.log2(joint)
        ctx.compiled = False
        inv_scale = tables.inverse_scale(log_scales)
        mass, u_plus, u_minus, cdf_plus, cdf_minus = bin_probability_q24(
            tables, value.unsqueeze(0), means, inv_scale,
            None if lower is None else lower.unsqueeze(0), None if upper is None else upper.unsqueeze(0))
        weights = tables.mixture_weights(logits)
        joint = (weights * mass).sum(dim=0)
        total = weights.sum(dim=0)
        ctx.edges = lower is not None
        ctx.save_for_backward(value, means, log_scales, inv_scale, mass, u_plus, u_minus, cdf_plus, cdf_minus,
                              weights, joint, total, *((lower, upper) if ctx.edges else ()))
        # Reported only (statistics), never replayed.
        return CDF_BITS + torch.log2(total) - torch.log2(joint)

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.compiled:
            value, means = ctx.saved_tensors[:2]  # (their version check)
            grads = _compiled_backward(grad_out, ctx.operands, value.shape, means.shape)
            return (*grads, None, None, None)
        (value, means, log_scales, inv_scale, mass, u_plus, u_minus, cdf_plus, cdf_minus,
         weights, joint, total) = ctx.saved_tensors[:12]
        bounds = tuple(b.unsqueeze(0) for b in ctx.saved_tensors[12:])
        grad_mean, grad_log_scale = _component_gradients(value.unsqueeze(0), means, inv_scale, mass, u_plus,
                                                         u_minus, cdf_plus, cdf_minus, bounds)
        responsibility = _responsibilities(value, means, inv_scale, mass, weights, joint)
        inside = (log_scales >= LOG_SCALE_MIN) & (log_scales <= LOG_SCALE_MAX)
        grad_mean = quantize_gradient(responsibility * grad_mean * grad_out)
        grad_log_scale = quantize_gradient(responsibility * grad_log_scale * inside * grad_out)
        grad_logits = quantize_gradient((weights / total - responsibility) * grad_out)
        grad_value = -grad_mean[0]
        for k in range(1, grad_mean.shape[0]):
            grad_value = grad_value - grad_mean[k]
        return grad_value, grad_mean, grad_log_scale, grad_logits, None, None, None


def _flat_operands(value, means, log_scales, logits, tables, lower, upper):
    """The compiled loops' operands (float64 numpy views, K x n and n), or None when the
    torch passes must run: no numba, another dtype or layout, or bounds given one-sided."""
    if not mixture_kernels.available() or tables.exp is None or (lower is None) != (upper is None):
        return None
    tensors = (value, means, log_scales, logits) + (() if lower is None else (lower, upper))
    if any(t.dtype != torch.float64 or t.device.type != "cpu" for t in tensors):
        return None
    k = means.shape[0]
    if (means.shape[1:] != value.shape or log_scales.shape != means.shape or logits.shape != means.shape
            or (lower is not None and (lower.shape != value.shape or upper.shape != value.shape))):
        return None

    def flat(t, rows=None):  # numpy's reshape of the contiguous view: no torch operation per operand
        t = (t.detach() if t.requires_grad else t).contiguous()
        return t.numpy().reshape(-1 if rows is None else (rows, -1))

    edges = lower is not None
    return (*_table_arrays(tables), flat(value), flat(means, k), flat(log_scales, k), flat(logits, k), edges,
            flat(lower) if edges else _NO_BOUNDS, flat(upper) if edges else _NO_BOUNDS)


_NO_BOUNDS = np.zeros(0)
_TABLE_ARRAYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _table_arrays(tables: LogisticTables) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy views of the tables' cdf, inv_scale and exp tensors, made once per tables object (the
    tensors are its fields, fixed for its life: a frozen dataclass)."""
    fields = (tables.cdf, tables.inv_scale, tables.exp)
    arrays = _TABLE_ARRAYS.get(tables)
    if arrays is None or any(a is not b for a, b in zip(arrays[0], fields)):
        arrays = _TABLE_ARRAYS[tables] = (fields, tuple(t.numpy() for t in fields))
    return arrays[1]


def _compiled_forward(operands, shape):
    """(joint, total) from mixture_kernels for ``_flat_operands``' operands, or None (the torch passes
    then run)."""
    if operands is None:
        return None
    joint, total = torch.empty(shape, dtype=torch.float64), torch.empty(shape, dtype=torch.float64)
    if not mixture_kernels.mixture_forward(*operands, joint.numpy().reshape(-1), total.numpy().reshape(-1)):
        return None  # an index off its table: the torch passes raise their own error
    return joint, total


def _compiled_backward(grad_out, operands, value_shape, shape):
    """(grad value, grad means, grad log-scales, grad logits), as the torch backward gives them;
    ``operands``: the forward's ``_flat_operands``."""
    grad_mean, grad_log_scale, grad_logits = (torch.empty(shape, dtype=torch.float64) for _ in range(3))
    flat = [g.numpy().reshape(shape[0], -1) for g in (grad_mean, grad_log_scale, grad_logits)]
    extremes = np.empty((3, 2))
    out = grad_out.to(torch.float64).expand(value_shape).reshape(-1).contiguous().numpy()
    if not mixture_kernels.mixture_backward(*operands, out, *flat, extremes):
        raise IndexError("a mixture's log-scale or logit is off its table")
    for values, (low, high) in zip(flat, extremes.tolist()):
        mixture_kernels.quantize_in_place(values, low, high)
    grad_value = torch.from_numpy(mixture_kernels.negated_sum(flat[0])).view(value_shape)
    return grad_value, grad_mean, grad_log_scale, grad_logits


def _float_nll_bits(value, mean, log_scale, lower=None, upper=None):
    """Smooth float32 NLL for pretraining; matches the tables up to rounding."""
    log_scale = torch.clamp(log_scale, LOG_SCALE_MIN, LOG_SCALE_MAX)
    inv_scale = torch.exp(-log_scale)
    delta = value - mean
    u_plus = (delta + 0.5) * inv_scale
    u_minus = (delta - 0.5) * inv_scale
    cdf_delta = torch.sigmoid(u_plus) - torch.sigmoid(u_minus)
    middle = delta * inv_scale
    log_density = middle - log_scale - 2.0 * torch.nn.functional.softplus(middle)
    log_prob = torch.where(cdf_delta > 1e-5, torch.log(torch.clamp(cdf_delta, min=1e-12)), log_density)
    if lower is not None:
        # log CDF(u+) = -softplus(-u+), log(1 - CDF(u-)) = -softplus(u-): stable in the tails.
        log_prob = torch.where(value <= lower, -torch.nn.functional.softplus(-u_plus), log_prob)
        log_prob = torch.where(value >= upper, -torch.nn.functional.softplus(u_minus), log_prob)
    return -log_prob / math.log(2.0)


def nll_bits(value, mean, log_scale, tables: LogisticTables, lower=None, upper=None) -> torch.Tensor:
    """Per-element NLL in bits: exact engine for float64, smooth for float32.

    ``lower``/``upper`` (both or neither): the value's known range, whose edge
    bins take the tails beyond it (module docstring)."""
    if value.dtype == torch.float64:
        return _ExactNLL.apply(value, mean, log_scale, tables, lower, upper)
    return _float_nll_bits(value, mean, log_scale, lower, upper)


def _float_mixture_nll_bits(value, means, log_scales, logits, lower=None, upper=None):
    """Smooth float32 mixture NLL for pretraining (log-sum-exp over the components)."""
    log_probs = torch.stack([-_float_nll_bits(value, means[k], log_scales[k], lower, upper) * math.log(2.0)
                             for k in range(means.shape[0])])
    log_weights = torch.log_softmax(torch.clamp(logits - logits.max(dim=0, keepdim=True).values.detach(),
                                                min=-EXP_RANGE), dim=0)
    return -torch.logsumexp(log_weights + log_probs, dim=0) / math.log(2.0)


def mixture_nll_bits(value, means, log_scales, logits, tables: LogisticTables, lower=None,
                     upper=None) -> torch.Tensor:
    """Per-element NLL in bits under a mixture of K discretized logistics.

    ``means``, ``log_scales`` and ``logits`` are shaped (K, *value.shape);
    exact engine for float64 (the tables need ``exp``), smooth for float32."""
    if value.dtype == torch.float64:
        return _ExactMixtureNLL.apply(value, means, log_scales, logits, tables, lower, upper)
    return _float_mixture_nll_bits(value, means, log_scales, logits, lower, upper)
