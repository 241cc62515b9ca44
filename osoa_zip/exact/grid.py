"""The exact core's grids and table precision, and ENGINE, the record that names them.

Kept free of torch: a decoder checks an archive's ENGINE record before it
knows whether the archive holds a single model-coded image (an archive of
text files is restored without loading torch).  fixed.py and logistic.py
take their constants from here, so there is one source for each number.
"""
WEIGHT_FRAC_BITS = 14
WEIGHT_LIMIT = 4.0
ACT_FRAC_BITS = 8
ACT_LIMIT = 1024.0
GRAD_BITS = 16
CDF_BITS = 24

ENGINE = {
    "name": "exact-fixed-point",
    "version": 1,
    "weight_frac_bits": WEIGHT_FRAC_BITS,
    "weight_limit": WEIGHT_LIMIT,
    "activation_frac_bits": ACT_FRAC_BITS,
    "activation_limit": ACT_LIMIT,
    "gradient_bits": GRAD_BITS,
    "cdf_bits": CDF_BITS,
}
