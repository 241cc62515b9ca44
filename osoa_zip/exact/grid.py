"""The exact core's grids and table precision, and the ENGINES records that name them.

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

# Engine 2 (docs/ENGINE2.md): every coupling convolution is an exact integer product
# (exact/intconv.py, exact/intlayers.py) with these limb widths and rounding; the rest
# of the model (couplings, logistic tables, Adam) is engine 1's float64 on its grids.
CONTEXT_EXPONENT = -6  # coupling inputs: (pixel - 128) * 2**-6
FIRST_WEIGHT_LIMBS = 2  # 7-bit limbs: the first conv's weights in [-8256, 8127]
LAST_INPUT_LIMBS = 2  # 8-bit limbs: the last conv's input in [-32896, 32639]
OUTPUT_LIMBS = 2  # 8-bit limbs: every stack's output in [-32896, 32639]
GRADIENT_LIMBS = 2  # 7-bit limbs: |gradient| <= 8127
LEAKY_SHIFT = 3  # leaky ReLU slope 2**-3, rounded half up

ENGINE2 = dict(ENGINE, **{
    "name": "exact-integer",
    "version": 2,
    "context_exponent": CONTEXT_EXPONENT,
    "limb_bits": [8, 7],
    "first_weight_limbs": FIRST_WEIGHT_LIMBS,
    "last_input_limbs": LAST_INPUT_LIMBS,
    "output_limbs": OUTPUT_LIMBS,
    "gradient_limbs": GRADIENT_LIMBS,
    "hidden_range": [-1024, 127],
    "leaky_shift": LEAKY_SHIFT,
    "rounding": "half-up",
    "weight_scales": "per-output-channel",
})

# version -> the record an archive's header carries for it.
ENGINES = {1: ENGINE, 2: ENGINE2}
