"""The exact mixture NLL's forward and backward as compiled loops (numba, optional; same bits).

``logistic._ExactMixtureNLL`` is a chain of ~60 elementwise torch passes over K x n
tensors per factor, and a flow codes ~30 factors per batch in every pass (triage,
coding, the guard, the backward): the passes' dispatch and their K x n temporaries
were a third of a batch's time.  The loops here compute the same values by the same
IEEE float64 operations in the same order, one latent at a time:

* every table index is the same float expression truncated to an integer, as
  ``.long()`` truncates (the operands are non-negative);
* sums over the K components are of integers below 2**44 (``joint``, ``total``), exact
  in any order;
* each gradient is the same product chain, left to right, as the torch expression
  (``responsibility * grad_mean * grad_out`` is ((r * g) * o)); numba emits no fused
  multiply-adds without ``fastmath``, so every operation is rounded once, as torch's;
* ``fixed.quantize_gradient``'s per-tensor scale comes from each tensor's exact
  extremes, found in the same loop; the rounding is then half to even (``np.rint``,
  which ``torch.round`` is) in a second loop.

The logarithms of the reported loss stay torch's (``log2`` is not an exact operation,
and the guard compares those sums).  Without numba, with ``OSOA_ZIP_NO_NUMBA=1``, or for a
command with little to code (coding/native.py), ``available()`` is False and the torch passes
run as before; the tests compare the two
bit for bit (tests/test_mixture_kernels.py).
"""
from __future__ import annotations

import math

import numpy as np

from ..coding import native
from .fixed import MIN_GRAD_EXPONENT
from .grid import ACT_FRAC_BITS, GRAD_BITS

# logistic.py's constants, repeated as plain numbers for the compiled loops (logistic imports
# this module; tests/test_mixture_kernels.py checks they agree).
CDF_ONE = 2.0 ** 24
CDF_RANGE = 16.0
CDF_STEP = 2.0 ** 6
LOG_SCALE_MIN = -2.0
LOG_SCALE_MAX = 5.0
EXP_RANGE = 16.0
ACT_STEP = float(2 ** ACT_FRAC_BITS)
TAIL_PROBABILITY = 2.0 ** -16
TAIL_MASS = TAIL_PROBABILITY * CDF_ONE

_jit = native._jit


def available() -> bool:
    """Whether the compiled loops serve the exact mixture NLL (``native.available()``: numba
    installed and on, and worth loading for the work the command announced)."""
    return native.available()


@_jit
def _cdf_q24(cdf, u):
    """``LogisticTables.cdf_q24`` of one value."""
    last = cdf.shape[0] - 1
    position = min(max((u + CDF_RANGE) * CDF_STEP, 0.0), float(last))
    index = min(np.floor(position), float(last - 1))
    fraction = position - index
    at = np.int64(index)
    lower = cdf[at]
    upper = cdf[at + 1]
    return lower + np.floor((upper - lower) * fraction)


@_jit
def _component(cdf, inv_table, value, mean, log_scale, edges, lower, upper):
    """One component of one latent: (ok, inv_scale, u_plus, u_minus, cdf_plus, cdf_minus, mass),
    as ``inverse_scale`` and ``bin_probability_q24`` compute them."""
    row = (min(max(log_scale, LOG_SCALE_MIN), LOG_SCALE_MAX) - LOG_SCALE_MIN) * ACT_STEP
    at = np.int64(row)
    if not (0 <= at < inv_table.shape[0]):
        return False, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    inv = inv_table[at]
    delta = value - mean
    u_plus = (delta + 0.5) * inv
    u_minus = (delta - 0.5) * inv
    cdf_plus = _cdf_q24(cdf, u_plus)
    cdf_minus = _cdf_q24(cdf, u_minus)
    if edges:
        if value <= lower:
            cdf_minus = 0.0
        if value >= upper:
            cdf_plus = CDF_ONE
    mass = max(cdf_plus - cdf_minus, 1.0)
    return True, inv, u_plus, u_minus, cdf_plus, cdf_minus, mass


@_jit
def _weights(exp_table, logits, i, out):
    """``LogisticTables.mixture_weights`` of latent i into out (K); False if off the table."""
    k_count = logits.shape[0]
    largest = logits[0, i]
    for k in range(1, k_count):
        largest = max(largest, logits[k, i])
    for k in range(k_count):
        relative = min(max(logits[k, i] - largest, -EXP_RANGE), 0.0)
        at = np.int64((relative + EXP_RANGE) * ACT_STEP)
        if not (0 <= at < exp_table.shape[0]):
            return False
        out[k] = exp_table[at]
    return True


@_jit
def mixture_forward(cdf, inv_table, exp_table, value, means, log_scales, logits, edges, lower, upper,
                    joint, total):
    """Per latent, sum_k e_k mass_k (``joint``) and sum_k e_k (``total``).  Returns False
    when an index leaves its table (the torch path then raises its own error)."""
    k_count, n = means.shape
    weights = np.empty(k_count)
    for i in range(n):
        if not _weights(exp_table, logits, i, weights):
            return False
        low = lower[i] if edges else 0.0
        high = upper[i] if edges else 0.0
        joint_i, total_i = 0.0, 0.0
        for k in range(k_count):
            ok, inv, u_plus, u_minus, cdf_plus, cdf_minus, mass = _component(
                cdf, inv_table, value[i], means[k, i], log_scales[k, i], edges, low, high)
            if not ok:
                return False
            joint_i += weights[k] * mass
            total_i += weights[k]
        joint[i] = joint_i
        total[i] = total_i
    return True


@_jit
def _sign(x):
    """torch.sign: +0.0 for either zero and for NaN."""
    return 1.0 if x > 0 else (-1.0 if x < 0 else 0.0)


@_jit
def mixture_backward(cdf, inv_table, exp_table, value, means, log_scales, logits, edges, lower, upper,
                     grad_out, grad_mean, grad_log_scale, grad_logits, extremes):
    """The unquantised gradients of ``_ExactMixtureNLL.backward`` (responsibility-weighted,
    times grad_out) into grad_mean, grad_log_scale and grad_logits (K x n), and each one's
    smallest and largest value into extremes (3 x 2; NaN if any value is NaN).  Returns False
    when an index leaves its table."""
    k_count, n = means.shape
    weights = np.empty(k_count)
    inv = np.empty(k_count)
    u_plus = np.empty(k_count)
    u_minus = np.empty(k_count)
    cdf_plus = np.empty(k_count)
    cdf_minus = np.empty(k_count)
    mass = np.empty(k_count)
    share = np.empty(k_count)
    low_m, high_m, low_s, high_s, low_l, high_l = np.inf, -np.inf, np.inf, -np.inf, np.inf, -np.inf
    nan = False
    for i in range(n):
        if not _weights(exp_table, logits, i, weights):
            return False
        x = value[i]
        low = lower[i] if edges else 0.0
        high = upper[i] if edges else 0.0
        joint, total = 0.0, 0.0
        lost = True
        for k in range(k_count):
            ok, inv[k], u_plus[k], u_minus[k], cdf_plus[k], cdf_minus[k], mass[k] = _component(
                cdf, inv_table, x, means[k, i], log_scales[k, i], edges, low, high)
            if not ok:
                return False
            joint += weights[k] * mass[k]
            total += weights[k]
            if not mass[k] < TAIL_MASS:
                lost = False
        # _responsibilities
        for k in range(k_count):
            share[k] = 0.0 if mass[k] < TAIL_MASS else weights[k] * mass[k] / joint
        if lost:
            best, nearest = np.abs(x - means[0, i]) * inv[0], 0
            for k in range(1, k_count):
                distance = np.abs(x - means[k, i]) * inv[k]
                if distance < best:
                    best, nearest = distance, k
            for k in range(k_count):
                share[k] = 1.0 if k == nearest else 0.0
        g = grad_out[i]
        for k in range(k_count):
            # _component_gradients
            p_plus = cdf_plus[k] / CDF_ONE
            p_minus = cdf_minus[k] / CDF_ONE
            density_plus = p_plus * (1.0 - p_plus)
            density_minus = p_minus * (1.0 - p_minus)
            probability = mass[k] / CDF_ONE
            gm = inv[k] * (density_plus - density_minus) / probability
            gs = (u_plus[k] * density_plus - u_minus[k] * density_minus) / probability
            delta = x - means[k, i]
            if probability < TAIL_PROBABILITY:
                gm = -_sign(delta) * inv[k]
                gs = 1.0 - np.abs(delta) * inv[k]
                if edges and (x <= low or x >= high):
                    gs = -np.abs(delta) * inv[k]
            log_scale = log_scales[k, i]
            inside = 1.0 if (log_scale >= LOG_SCALE_MIN and log_scale <= LOG_SCALE_MAX) else 0.0
            r = share[k]
            a = r * gm * g
            b = r * gs * inside * g
            c = (weights[k] / total - r) * g
            grad_mean[k, i] = a
            grad_log_scale[k, i] = b
            grad_logits[k, i] = c
            if a != a or b != b or c != c:
                nan = True
            low_m, high_m = min(low_m, a), max(high_m, a)
            low_s, high_s = min(low_s, b), max(high_s, b)
            low_l, high_l = min(low_l, c), max(high_l, c)
    extremes[0, 0], extremes[0, 1] = low_m, high_m
    extremes[1, 0], extremes[1, 1] = low_s, high_s
    extremes[2, 0], extremes[2, 1] = low_l, high_l
    if nan:
        extremes[:, :] = np.nan
    return True


@_jit
def fill_component_rows(cdf, inv_scale, missing, scale_rows, offset_steps, reach, out):
    """``mixture_coder._ComponentRows.ensure``'s rows: row r = o * scale_rows + s holds the
    CDF at the edges j - reach - 1/2 - offset_o for the scale of row s, by the same
    elementwise operations as its numpy passes (table ends beyond +-CDF_RANGE, else
    ``cdf_q24``'s interpolation)."""
    width = out.shape[1]
    low_end, high_end = cdf[0], cdf[cdf.shape[0] - 1]
    for t in range(missing.shape[0]):
        row = missing[t]
        inv = inv_scale[row % scale_rows]
        offset = ((row // scale_rows) + 0.5) / offset_steps - 0.5
        core = np.int64(np.ceil(CDF_RANGE / inv)) + 2
        first, last = max(0, reach - core), min(width, reach + core + 1)
        for j in range(width):
            if j < first:
                value = low_end
            elif j >= last:
                value = high_end
            else:
                u = ((j - reach - 0.5) - offset) * inv
                if u <= -CDF_RANGE:
                    value = low_end
                elif u >= CDF_RANGE:
                    value = high_end
                else:
                    value = _cdf_q24(cdf, u)
            out[row, j] = np.int32(value)


@_jit
def _round_onto(values, step):
    """values = rint(values / step) * step, in place (``(g / step).round_().mul_(step)``)."""
    flat = values.reshape(-1)
    for j in range(flat.shape[0]):
        flat[j] = np.rint(flat[j] / step) * step


@_jit
def _zero(values):
    flat = values.reshape(-1)
    for j in range(flat.shape[0]):
        flat[j] = 0.0


@_jit
def _negated_sum(grad_mean, out):
    """out = ((-g_0) - g_1) - ... over the components, as the torch loop sums them."""
    k_count, n = grad_mean.shape
    for i in range(n):
        total = -grad_mean[0, i]
        for k in range(1, k_count):
            total = total - grad_mean[k, i]
        out[i] = total


def quantize_in_place(values: np.ndarray, low: float, high: float) -> None:
    """``fixed.quantize_gradient`` of a tensor whose extremes are (low, high), in place.

    NaN extremes (a NaN inside) give zeros, as ``bool(peak > 0)`` is then False."""
    if values.size == 0:
        return
    peak = max(-low, high) if not (math.isnan(low) or math.isnan(high)) else math.nan
    if not peak > 0:
        _zero(values)
        return
    exponent = math.frexp(peak)[1]
    if exponent - GRAD_BITS < MIN_GRAD_EXPONENT:
        _zero(values)
        return
    _round_onto(values, math.ldexp(1.0, exponent - GRAD_BITS))


def negated_sum(grad_mean: np.ndarray) -> np.ndarray:
    out = np.empty(grad_mean.shape[1])
    _negated_sum(grad_mean, out)
    return out
