"""The bit-exact numeric core: fixed-point grids, integer tables, exact Adam.

ENGINE names this core and its parameters; archives record it, and a decoder
refuses an archive written by a different engine.
"""
from . import fixed, logistic

ENGINE = {
    "name": "exact-fixed-point",
    "version": 1,
    "weight_frac_bits": fixed.WEIGHT_FRAC_BITS,
    "weight_limit": fixed.WEIGHT_LIMIT,
    "activation_frac_bits": fixed.ACT_FRAC_BITS,
    "activation_limit": fixed.ACT_LIMIT,
    "gradient_bits": fixed.GRAD_BITS,
    "cdf_bits": logistic.CDF_BITS,
}
