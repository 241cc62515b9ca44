"""A convolutional VAE with integer latents, coded with bits-back ANS.

Shapes: a tile x (C x H x W, pixel values 0..255) has a latent z of
``latent_channels`` x ceil(H/4) x ceil(W/4) *integers*.  All three
distributions are discretized logistics over integer bins, so they reuse the
exact core's integer tables and the flow's logistic coder:

* posterior q(z|x): mean and log-scale from the inference network;
* prior p(z): one learned mean and log-scale per latent channel;
* likelihood p(x|z): one logistic per sub-pixel from the generative
  network; for RGB, as in PixelCNN++, G's mean moves linearly with R's
  deviation from its own mean, and B's with R's and G's (coefficients are
  network outputs, clamped to +-COEFFICIENT_LIMIT, products floored onto the
  activation grid).

With ``mixture_components`` K > 1 (vae-conv-v2) the likelihood is a mixture
of K discretized logistics per sub-pixel with edge bins (the pixel range's
tails go to the bins at 0 and 255): the generative network appends, per
extra component, a mean shift (times MIXTURE_SHIFT_GAIN), a log-scale shift
and a logit; the cross-channel terms move every component's mean alike.
Pixels are then coded by coding/mixture_coder.py.

With ``top_latent_channels`` T > 0 the VAE is hierarchical (two latent
levels): a top latent z_top (T x ceil(h/2) x ceil(w/2) integers for z's
h x w) with posterior q(z_top|z) (bottom-up, as in Bit-Swap) and a flat prior
p(z_top), and z's prior becomes p(z|z_top): the flat prior's per-channel mean
and log-scale plus shifts from a small network of z_top (zero at
initialisation, so a warm start from a one-level VAE keeps its ELBO).

Down- and up-sampling are pixel (un)shuffles (permutations), so every
reduction is still an exact 3x3 convolution of the core.  Sides that are not
multiples of 4 are padded (replicated edge) for the inference network, and
the likelihood's parameters are cropped back.

Coding (``encode``/``decode``, on a ``StackCoder``): tiles are coded last
to first, each with bits-back: pop z under q(z|x), push x under p(x|z) and
z under p(z).  The decoder meets the tiles first to last and undoes each
step: pop z, pop x, push z back under q(z|x).  A hierarchical model pops
z_top under q(z_top|z) after z, and pushes z_top under p(z_top) and z under
p(z|z_top); its decoder pushes z_top back under q(z_top|z) before z.  The first tile laid on an
empty stack (``initial``: the batch's last) has nothing to pop from yet: it
takes the posterior's mode instead and is coded without bits back (HiLLoC's
answer to the initial-bits problem), so a batch's bytes are its tiles'
negative ELBO plus that tile's -log q(z|x) and the coder's final state.  A
chain of batches on one stack (adapt/engine.py, format 1.4) pays that once:
every batch but the one coded first is coded with ``initial=False``.

Training loss (``nll``): the negative ELBO in bits for one sample
z = round(mu + s * eps) per latent, with a straight-through rounding and the
reparameterisation gradient.  In the exact (float64) engine eps comes from
``exact.noise`` seeded by the batch's pixels, so the decoder, which has the
same pixels, replays the same loss; in float32 pretraining it comes from
torch's generator.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..coding.ans import Encoder
from ..coding.bitsback import StackCoder
from ..coding.logistic_coder import pop_factor, push_factor
from ..coding.mixture_coder import pop_mixture_factor, push_mixture_factors
from ..exact.fixed import quantize_activation
from ..exact.layers import ExactConv2d, leaky_relu
from ..exact.logistic import LOG_SCALE_MAX, LOG_SCALE_MIN, LogisticTables, mixture_nll_bits, nll_bits
from ..exact.noise import logistic_noise, seed_of
from .mixture import extra_outputs, mixture_components
from .protocol import CodingModel, register_family

PIXEL_CENTER = 128.0
CONTEXT_SCALE = 1.0 / 64.0  # pixels enter the inference network in [-2, 2)
LATENT_SCALE = 1.0 / 8.0    # integer latents enter the generative network in steps of 1/8
# The pixel means are PIXEL_CENTER + MEAN_GAIN * output: an output of +-4 spans
# the pixel range (Adam moves a weight by about its learning rate per step), and
# the means stay on a 2**-3 grid, well inside the coder's 1/16-pixel snapping.
MEAN_GAIN = 32.0
DOWNSAMPLING = 4
COEFFICIENT_LIMIT = 2.0
MIXTURE_SHIFT_GAIN = 8.0  # extra components' mean shifts, in pixels per unit of output (a power of two)
PIXEL_MAX = 255.0
# Hierarchical models (``top_latent_channels`` > 0): p(z|z_top)'s mean is the
# learned per-channel mean plus TOP_MEAN_GAIN * output (z's scale is ~e**2 ~ 7).
TOP_MEAN_GAIN = 4.0
# The top latent's noise is drawn from another stream of the same counter-based hash.
TOP_NOISE_SALT = 0x5DEECE66D


def coefficient_count(channels: int) -> int:
    return channels * (channels - 1) // 2


def latent_side(side: int) -> int:
    return -(-side // DOWNSAMPLING)


class _Reparameterize(torch.autograd.Function):
    """z = floor(mean + spread + 1/2), spread = scale * eps; straight-through.

    d z / d mean = 1 and d z / d log_scale = spread (the scale's derivative
    is itself).  Elementwise products only, so the backward pass replays.
    """

    @staticmethod
    def forward(ctx, mean, log_scale, spread):
        ctx.save_for_backward(spread)
        return torch.floor(mean + spread + 0.5)

    @staticmethod
    def backward(ctx, grad):
        (spread,) = ctx.saved_tensors
        return grad, grad * spread, None


@register_family("vae", architecture="conv-vae-bitsback")
class ConvVAE(CodingModel):
    """The VAE for tiles of one channel count (1 = L, 3 = RGB).

    Coded with bits-back on one stack that pushes and pops (coding/bitsback.py),
    so consecutive batches may share it (format 1.4's chains).  Every parameter
    adapts, whatever the selection, and the guard compares θ0 on every batch:
    the one-sample ELBO swings from batch to batch.
    """

    config_keys = frozenset({"hidden", "latent_channels", "mixture_components", "top_latent_channels"})
    # A new VAE gets vae-hier-v3's architecture (a three-logistic mixture likelihood,
    # a top latent level of 8 channels).
    default_config = {"family": "vae", "hidden": 48, "latent_channels": 16, "mixture_components": 3,
                      "top_latent_channels": 8}
    chains_batches = True
    guard_every_batch = True
    new_encoder = staticmethod(StackCoder)
    new_decoder = staticmethod(StackCoder)

    def __init__(self, channels: int, hidden: int, latent_channels: int, mixture_components: int = 1,
                 top_latent_channels: int = 0):
        super().__init__()
        self.channels = channels
        self.latent_channels = latent_channels
        self.components = int(mixture_components)
        if self.components < 1:
            raise ValueError("mixture_components must be at least 1")
        c, h, k = channels, hidden, latent_channels
        half = max(hidden // 4, 4)
        # x -> unshuffle -> conv, conv -> unshuffle -> conv, conv -> (mean, log-scale) of z
        self.inference = nn.ModuleList([ExactConv2d(4 * c, h), ExactConv2d(h, h),
                                        ExactConv2d(4 * h, h), ExactConv2d(h, 2 * k)])
        # z -> conv, conv -> shuffle -> conv, conv -> shuffle -> conv -> pixel logistics
        self.generative = nn.ModuleList([ExactConv2d(k, h), ExactConv2d(h, 4 * h),
                                         ExactConv2d(h, h), ExactConv2d(h, 4 * half),
                                         ExactConv2d(half, 2 * c + coefficient_count(c)
                                                     + extra_outputs(self.components) * c)])
        self.prior_mean = nn.Parameter(torch.zeros(k))
        self.prior_log_scale = nn.Parameter(torch.full((k,), 2.0))
        self.tables: LogisticTables | None = None
        self.top_channels = int(top_latent_channels)
        if self.top_channels:
            # z -> conv -> unshuffle -> conv -> (mean, log-scale) of z_top (bottom-up, as Bit-Swap);
            # z_top -> conv -> conv -> shuffle -> conv -> (mean, log-scale) shifts of p(z|z_top)
            t = self.top_channels
            self.top_inference = nn.ModuleList([ExactConv2d(k, h), ExactConv2d(4 * h, 2 * t)])
            self.top_generative = nn.ModuleList([ExactConv2d(t, h), ExactConv2d(h, 4 * h), ExactConv2d(h, 2 * k)])
            self.top_prior_mean = nn.Parameter(torch.zeros(t))
            self.top_prior_log_scale = nn.Parameter(torch.full((t,), 1.0))
        with torch.no_grad():  # start from small pixel means and a wide pixel scale
            last = self.generative[-1]
            last.weight.mul_(0.1)
            last.bias[c:2 * c] = 3.0
            self.inference[-1].weight.mul_(0.5)
            if self.top_channels:  # p(z|z_top) starts as the flat prior p(z) (a warm start keeps its ELBO)
                self.top_generative[-1].weight.zero_()
                self.top_generative[-1].bias.zero_()

    @classmethod
    def from_config(cls, channels: int, config: dict) -> "ConvVAE":
        """``hidden``, ``latent_channels``; ``mixture_components`` for a mixture likelihood
        with edge bins, ``top_latent_channels`` for a second, top latent level."""
        return cls(channels, config["hidden"], config["latent_channels"],
                   mixture_components=int(config.get("mixture_components", 1)),
                   top_latent_channels=int(config.get("top_latent_channels", 0)))

    def mixture_layers(self) -> list[tuple[nn.Module, int]]:
        """The generative network's last layer: one value per channel."""
        return [(self.generative[-1], self.channels)]

    # -- the three distributions -------------------------------------------
    def posterior(self, pixels: torch.Tensor):
        """mean and log-scale of q(z|x), each B x K x ceil(H/4) x ceil(W/4)."""
        height, width = pixels.shape[2:]
        pad_h = latent_side(height) * DOWNSAMPLING - height
        pad_w = latent_side(width) * DOWNSAMPLING - width
        x = (pixels - PIXEL_CENTER) * CONTEXT_SCALE
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        first, second, third, last = self.inference
        x = F.pixel_unshuffle(x, 2)
        x = leaky_relu(second(leaky_relu(first(x))))
        x = F.pixel_unshuffle(x, 2)
        mean, log_scale = last(leaky_relu(third(x))).chunk(2, dim=1)
        return mean, log_scale

    def prior(self, shape):
        """mean and log-scale of p(z), broadcast to the latent shape."""
        view = (1, -1, 1, 1)
        mean = quantize_activation(self.prior_mean).view(view).expand(shape)
        log_scale = quantize_activation(self.prior_log_scale).view(view).expand(shape)
        return mean, log_scale

    def top_posterior(self, z: torch.Tensor):
        """mean and log-scale of q(z_top|z), each B x T x ceil(h/2) x ceil(w/2) for z's h x w."""
        height, width = z.shape[2:]
        x = z * LATENT_SCALE
        if height % 2 or width % 2:
            x = F.pad(x, (0, width % 2, 0, height % 2), mode="replicate")
        first, last = self.top_inference
        x = F.pixel_unshuffle(leaky_relu(first(x)), 2)
        return last(x).chunk(2, dim=1)

    def top_prior(self, shape):
        """mean and log-scale of p(z_top), broadcast to its shape."""
        view = (1, -1, 1, 1)
        return (quantize_activation(self.top_prior_mean).view(view).expand(shape),
                quantize_activation(self.top_prior_log_scale).view(view).expand(shape))

    def conditional_prior(self, z_top: torch.Tensor, shape):
        """mean and log-scale of p(z|z_top) for a z of ``shape``."""
        first, second, last = self.top_generative
        y = F.pixel_shuffle(leaky_relu(second(leaky_relu(first(z_top * LATENT_SCALE)))), 2)
        y = last(leaky_relu(y))[:, :, :shape[2], :shape[3]]
        mean, log_scale = self.prior(shape)
        return mean + TOP_MEAN_GAIN * y[:, :self.latent_channels], log_scale + y[:, self.latent_channels:]

    def likelihood(self, z: torch.Tensor, height: int, width: int):
        """Per sub-pixel (mean, log-scale), the cross-channel coefficients of p(x|z), and the
        extra components' (mean shift, log-scale shift, logit) blocks (empty without mixtures)."""
        c = self.channels
        first, second, third, fourth, last = self.generative
        y = leaky_relu(second(leaky_relu(first(z * LATENT_SCALE))))
        y = F.pixel_shuffle(y, 2)
        y = leaky_relu(fourth(leaky_relu(third(y))))
        y = last(F.pixel_shuffle(y, 2))[:, :, :height, :width]
        mean = y[:, :c] * MEAN_GAIN + PIXEL_CENTER
        log_scale = y[:, c:2 * c]
        pairs = coefficient_count(c)
        coefficients = torch.clamp(y[:, 2 * c:2 * c + pairs], -COEFFICIENT_LIMIT, COEFFICIENT_LIMIT)
        return mean, log_scale, coefficients, y[:, 2 * c + pairs:]

    def pixel_distribution(self, likelihood, pixels, channel: int) -> tuple:
        """Channel c's (mean, log_scale), or (means, log_scales, logits) with K components first."""
        mean, log_scale, coefficients, extra = likelihood
        centre = self.channel_mean(mean, coefficients, pixels, channel)
        spread = log_scale[:, channel:channel + 1]
        if self.components == 1:
            return centre, spread
        return mixture_components(centre, spread, extra, self.components, slice(channel, channel + 1),
                                  MIXTURE_SHIFT_GAIN)

    def _pixel_bounds(self, like: torch.Tensor) -> tuple:
        return torch.zeros_like(like), torch.full_like(like, PIXEL_MAX)

    def _pixel_nll(self, values, distribution) -> torch.Tensor:
        if self.components == 1:
            return nll_bits(values, *distribution, self.tables)
        return mixture_nll_bits(values, *distribution, self.tables, *self._pixel_bounds(values))

    def channel_mean(self, mean, coefficients, pixels, channel: int) -> torch.Tensor:
        """Channel c's mean given the true values of channels < c (pairs (1,0), (2,0), (2,1))."""
        if channel == 0:
            return mean[:, :1]
        first_pair = coefficient_count(channel)
        cross = sum(coefficients[:, first_pair + j:first_pair + j + 1] * (pixels[:, j:j + 1] - mean[:, j:j + 1])
                    for j in range(channel))
        return mean[:, channel:channel + 1] + quantize_activation(cross)

    # -- training loss ------------------------------------------------------
    def _sample(self, mean, log_scale, pixels, salt: int = 0):
        if mean.dtype == torch.float64:
            eps = logistic_noise(self.tables, seed_of(pixels) ^ salt, mean.shape)
            inv_scale = self.tables.inverse_scale(log_scale.detach())
            spread = eps / inv_scale
        else:
            u = torch.rand(mean.shape).clamp(1e-6, 1 - 1e-6)
            eps = torch.log(u) - torch.log1p(-u)
            spread = eps * torch.exp(torch.clamp(log_scale.detach(), LOG_SCALE_MIN, LOG_SCALE_MAX))
        return _Reparameterize.apply(mean, log_scale, spread)

    def nll(self, pixels: torch.Tensor) -> torch.Tensor:
        """Negative ELBO of a batch in bits for one latent sample (differentiable, replayable)."""
        pixels = pixels.to(self.prior_mean.dtype)
        post_mean, post_log_scale = self.posterior(pixels)
        z = self._sample(post_mean, post_log_scale, pixels)
        terms = []
        if self.top_channels:
            top_mean, top_log_scale = self.top_posterior(z)
            z_top = self._sample(top_mean, top_log_scale, pixels, TOP_NOISE_SALT)
            prior_mean, prior_log_scale = self.conditional_prior(z_top, z.shape)
            terms += [nll_bits(z_top, *self.top_prior(z_top.shape), self.tables).sum(),
                      -nll_bits(z_top, top_mean, top_log_scale, self.tables).sum()]
        else:
            prior_mean, prior_log_scale = self.prior(z.shape)
        likelihood = self.likelihood(z, pixels.shape[2], pixels.shape[3])
        terms += [nll_bits(z, prior_mean, prior_log_scale, self.tables).sum(),
                  -nll_bits(z, post_mean, post_log_scale, self.tables).sum()]
        for c in range(self.channels):
            terms.append(self._pixel_nll(pixels[:, c:c + 1], self.pixel_distribution(likelihood, pixels, c)).sum())
        return torch.stack(terms).sum()

    # -- bits-back coding ---------------------------------------------------
    def _push_tile(self, coder, pixels, z, z_top=None) -> None:
        """One group, in the decoder's order: z_top under p(z_top) (hierarchical models), z under
        p(z) or p(z|z_top), then x channel by channel."""
        group = Encoder()
        if z_top is None:
            push_factor(group, self.tables, z, *self.prior(z.shape))
        else:
            push_factor(group, self.tables, z_top, *self.top_prior(z_top.shape))
            push_factor(group, self.tables, z, *self.conditional_prior(z_top, z.shape))
        likelihood = self.likelihood(z, pixels.shape[2], pixels.shape[3])
        for c in range(self.channels):
            values = pixels[:, c:c + 1]
            distribution = self.pixel_distribution(likelihood, pixels, c)
            if self.components == 1:
                push_factor(group, self.tables, values, *distribution)
            else:
                push_mixture_factors(group, self.tables, [(values, *distribution, *self._pixel_bounds(values))])
        coder.push(group)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, coder, initial: bool = True) -> None:
        """Bits-back code a batch onto ``coder`` (a StackCoder), last tile first.

        ``initial``: the stack is empty, so the last tile cannot pop its latent.
        """
        pixels = pixels.to(self.prior_mean.dtype)
        post_mean, post_log_scale = self.posterior(pixels)
        for i in reversed(range(pixels.shape[0])):
            tile = slice(i, i + 1)
            first = initial and i == pixels.shape[0] - 1  # nothing on the stack yet: modes, no bits back
            if first:
                z = torch.floor(post_mean[tile] + 0.5)
            else:
                z = pop_factor(coder, self.tables, post_mean[tile], post_log_scale[tile], escape=False)
            z_top = None
            if self.top_channels:
                top_mean, top_log_scale = self.top_posterior(z)
                z_top = (torch.floor(top_mean + 0.5) if first
                         else pop_factor(coder, self.tables, top_mean, top_log_scale, escape=False))
            self._push_tile(coder, pixels[tile], z, z_top)

    @torch.no_grad()
    def decode(self, coder, shape, initial: bool = True) -> torch.Tensor:
        """Decode a batch coded by ``encode(..., initial)``; with ``initial`` False the last
        tile gives its bits back too (they are the next batch's, on a chained stack)."""
        batch, channels, height, width = shape
        latent_shape = (1, self.latent_channels, latent_side(height), latent_side(width))
        tiles = []
        for i in range(batch):
            if self.top_channels:
                top_shape = (1, self.top_channels, -(-latent_shape[2] // 2), -(-latent_shape[3] // 2))
                z_top = pop_factor(coder, self.tables, *self.top_prior(top_shape))
                z = pop_factor(coder, self.tables, *self.conditional_prior(z_top, latent_shape))
            else:
                z = pop_factor(coder, self.tables, *self.prior(latent_shape))
            likelihood = self.likelihood(z, height, width)
            pixels = torch.empty(1, channels, height, width, dtype=torch.float64)
            for c in range(channels):
                distribution = self.pixel_distribution(likelihood, pixels, c)
                if self.components == 1:
                    pixels[:, c:c + 1] = pop_factor(coder, self.tables, *distribution)
                else:
                    pixels[:, c:c + 1] = pop_mixture_factor(coder, self.tables, *distribution,
                                                            *self._pixel_bounds(pixels[:, c:c + 1]))
            if i < batch - 1 or not initial:  # give back the bits the encoder took to choose z (and z_top)
                if self.top_channels:
                    group = Encoder()
                    push_factor(group, self.tables, z_top, *self.top_posterior(z), escape=False)
                    coder.push(group)
                group = Encoder()
                push_factor(group, self.tables, z, *self.posterior(pixels), escape=False)
                coder.push(group)
            tiles.append(pixels)
        return torch.cat(tiles)
