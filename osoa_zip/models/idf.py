"""A multiscale integer discrete flow over 2x2 sub-lattices.

Each level squeezes the image y (C channels) into its four 2x2 sub-lattices
s0..s3.  Two additive couplings with rounding turn s1,s2 (given s0) and then
s3 (given s0,s1,s2) into integer residuals z = s - round(t), where the
translation t is the average of the known neighbours plus a learned
correction; each residual is factored out under a discretized logistic whose
mean and scale are predicted from what is already known.  s0 carries on to
the next level, and what remains after the last level has a per-channel
prior.  The map from pixels to latents is a bijection on integers, so the
likelihood is exact and every latent can be entropy coded.

One traversal (``_traverse``) serves training, encoding and decoding: at each
factor it asks a ``take`` callback for the pixel values of the factor's
target, which the encoder knows and the decoder decodes.

Cross-channel conditioning (config ``channel_coupling``, RGB only; v2): as in
PixelCNN++, each coupling's network also predicts per-pixel coefficients
that make a channel's translation depend linearly on the channels before it
at the same position, whose true values are known by then:

    t_G += a * (x_R - base_R)
    t_B += b * (x_R - base_R) + c * (x_G - base_G)

Each coupling is then coded as one factor per channel (R, then G, then B;
keys ``(level, name, channel)``), so the decoder has x_R before it needs
G's offset.  The coefficients are network outputs on the activation grid,
clamped to +-COEFFICIENT_LIMIT; the products are exact dyadic numbers and
their sum is floored back onto the activation grid before the rounding, so
the exact engine stays exact.  Without the key the network, its parameters
and its factors are exactly those of v1.

With ``mean_remainder`` as well (v2), the rounding remainder
``shift - round(shift)`` of each channel's translation is added to that
factor's logistic mean, so x ~ DLogistic(shift + mean) with a full-precision
shift: the fractional part of a * (x_R - base_R) depends on the just-decoded
x_R, which the network cannot see, and would otherwise be lost to rounding.
The remainder is on the activation grid (shift is), so the sum is exact.
Both flags act only on networks with more than one channel.

With ``edge_bins`` (v4), every factor knows its latents' range: the pixel is
in [0, 255], so z = x - offset is in [-offset, 255 - offset], and the
logistic's tails beyond the range go to the edge bins (exact/logistic.py).
Factors then carry (latents, mean, log_scale, lower, upper) for the coder.

With ``mixture_components`` K > 1 (v6; needs edge bins), each factor's latent
follows a mixture of K discretized logistics, as in PixelCNN++: component 0 is
the single logistic above, and each network appends, per extra component k,
a mean shift, a log-scale shift and a logit (component 0's logit is 0):

    mean_k = mean_0 + dmean_k,   log_scale_k = log_scale_0 + dlog_scale_k

All are on the activation grid, so the sums are exact.  Zero extra rows make
every component the same logistic, so a single-logistic checkpoint
warm-starts the mixture at its own likelihood.  The final prior stays one
logistic (K equal components, so that every factor has the same shape).
Factors then carry (latents, means, log_scales, logits, lower, upper),
components first, for coding/mixture_coder.py.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..coding import native
from ..coding.logistic_coder import pop_factor, push_factors
from ..coding.mixture_coder import CodedIntervals, coded_intervals, pop_mixture_factor, push_mixture_factors
from ..exact.fixed import quantize_activation, round_to_integer
from ..exact.intlayers import IntegerConvStack
from ..exact.layers import ConvStack
from ..exact.logistic import LogisticTables, mixture_nll_bits, nll_bits
from .mixture import extra_outputs, mixture_stack, output_pieces
from .protocol import CodingModel, register_family

CONTEXT_SCALE = 1.0 / 64.0  # pixels enter the networks in [-2, 2)
PIXEL_CENTER = 128.0
PIXEL_MAX = 255.0
MIN_FINAL_SIDE = 4
COEFFICIENT_LIMIT = 2.0  # cross-channel coefficients are clamped to [-2, 2]

# take(key, mean, log_scale, logits, offset): logits None for one logistic, else (K, ...) components
Take = Callable[[tuple, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]
FINAL = "final"  # the final prior's factor key, and its name in a part's levels
# Some of a traversal's factors (SubLatticeFlow.parts): level indices, and FINAL for the prior.
Levels = frozenset


def sublattices(y: torch.Tensor):
    return y[:, :, 0::2, 0::2], y[:, :, 0::2, 1::2], y[:, :, 1::2, 0::2], y[:, :, 1::2, 1::2]


def merge_sublattices(s0, s1, s2, s3) -> torch.Tensor:
    b, c, h, w = s0.shape
    y = s0.new_empty(b, c, 2 * h, 2 * w)
    y[:, :, 0::2, 0::2] = s0
    y[:, :, 0::2, 1::2] = s1
    y[:, :, 1::2, 0::2] = s2
    y[:, :, 1::2, 1::2] = s3
    return y


def next_along(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x shifted by one towards lower indices along dim, edge replicated."""
    rest = x.narrow(dim, 1, x.shape[dim] - 1)
    return torch.cat([rest, x.narrow(dim, x.shape[dim] - 1, 1)], dim)


def level_count(height: int, width: int) -> int:
    levels = 0
    while height % 2 == 0 and width % 2 == 0 and min(height, width) >= 2 * MIN_FINAL_SIDE:
        height, width, levels = height // 2, width // 2, levels + 1
    return levels


def level_sizes(height: int, width: int, deep: bool = False) -> list[tuple[int, int]]:
    """The side lengths of y at each level, finest first; the last is what the final prior codes.

    Classic (v1, v2): halve while both sides are even and at least 2 * MIN_FINAL_SIDE.
    Deep (config ``deep_levels``): halve until 1 x 1, an odd side first repeating
    its last row or column; the decoder crops the copy away again.
    """
    if not deep:
        levels = level_count(height, width)
        return [(height >> level, width >> level) for level in range(levels + 1)]
    sizes = [(height, width)]
    while height > 1 or width > 1:
        height, width = (height + 1) // 2, (width + 1) // 2
        sizes.append((height, width))
    return sizes


def pad_to_even(y: torch.Tensor) -> torch.Tensor:
    """Repeat the last row / column of an odd side (deep levels)."""
    if y.shape[2] % 2:
        y = torch.cat([y, y[:, :, -1:]], dim=2)
    if y.shape[3] % 2:
        y = torch.cat([y, y[:, :, :, -1:]], dim=3)
    return y


def context(*pixels: torch.Tensor) -> torch.Tensor:
    return (torch.cat(pixels, dim=1) - PIXEL_CENTER) * CONTEXT_SCALE


def coefficient_count(channels: int) -> int:
    """Cross-channel coefficients per pixel of one sub-lattice: one per earlier channel."""
    return channels * (channels - 1) // 2


class LevelPredictor(nn.Module):
    """The two couplings of one level: s1,s2 | s0, then s3 | s0,s1,s2.

    With ``coefficients`` > 0 each network's output ends with that many
    cross-channel coefficients per predicted sub-lattice (after the
    translation, mean and log-scale blocks); with ``components`` > 1 it then
    ends with (mean shift, log-scale shift, logit) blocks per extra component.
    """

    def __init__(self, channels: int, hidden: int, depth: int, coefficients: int = 0, components: int = 1,
                 engine: int = 1):
        super().__init__()
        extra = extra_outputs(components)
        stack = ConvStack if engine == 1 else IntegerConvStack.empty
        self.edges = stack(channels, hidden, (3 + extra) * 2 * channels + 2 * coefficients, depth)
        self.centres = stack(3 * channels, hidden, (3 + extra) * channels + coefficients, depth)


@register_family("flow", architecture="sublattice-idf")
class SubLatticeFlow(CodingModel):
    """The flow for images of one channel count (1 = L, 3 = RGB).

    Checkpoints without a ``family`` key are flows (models/registry.py).  Each
    batch is its own stream (no chains): ``analyse`` gives detached factors, so
    the engine codes them while it adapts, and the decoding pass is ``nll``'s
    forward pass (``decode_with_loss``).
    """

    config_keys = frozenset({"hidden", "depth", "levels", "channel_coupling", "mean_remainder", "deep_levels",
                             "edge_bins", "mixture_components", "engine"})
    # A new flow gets the shipped default's architecture (v6: cross-channel couplings,
    # deep levels, edge bins, three-logistic mixtures).
    default_config = {"hidden": 48, "depth": 3, "levels": 3, "channel_coupling": True, "mean_remainder": True,
                      "deep_levels": True, "edge_bins": True, "mixture_components": 3}

    def __init__(self, channels: int, hidden: int, depth: int, levels: int, channel_coupling: bool = False,
                 mean_remainder: bool = False, deep_levels: bool = False, edge_bins: bool = False,
                 mixture_components: int = 1, engine: int = 1):
        super().__init__()
        if engine not in (1, 2):
            raise ValueError(f"the flow runs on engine 1 or 2, not {engine!r}")
        self.engine = engine
        self.channels = channels
        self.edge_bins = bool(edge_bins)
        self.components = int(mixture_components)
        if self.components < 1 or (self.components > 1 and not self.edge_bins):
            raise ValueError("mixture_components must be 1, or more with edge_bins (the mixture coder "
                             "codes bounded latents)")
        # v3: levels go on down to 1 x 1 (the last predictor serves the extra ones), so the
        # weak final prior codes one pixel instead of up to 7 x 7 (12% of a 28x28 image's bits).
        self.deep_levels = bool(deep_levels)
        # One channel has nothing to condition on: both flags are then no-ops,
        # so a v2 checkpoint's gray network is v1's.
        self.channel_coupling = bool(channel_coupling) and channels > 1
        self.mean_remainder = bool(mean_remainder) and self.channel_coupling
        coefficients = coefficient_count(channels) if self.channel_coupling else 0
        self.levels = nn.ModuleList(LevelPredictor(channels, hidden, depth, coefficients, self.components, engine)
                                    for _ in range(levels))
        self.final_mean = nn.Parameter(torch.zeros(channels))
        self.final_log_scale = nn.Parameter(torch.full((channels,), 3.5))
        self.tables: LogisticTables | None = None

    @classmethod
    def from_config(cls, channels: int, config: dict) -> "SubLatticeFlow":
        """``channel_coupling`` and ``mean_remainder`` (v2) add cross-channel
        conditioning to the RGB network (the gray one is unaffected);
        ``deep_levels`` (v3) takes the sub-lattice levels down to 1 x 1;
        ``edge_bins`` (v4) gives the pixel range's tails to the edge bins;
        ``mixture_components`` (v6) makes every sub-lattice factor a mixture of
        that many logistics; ``engine`` 2 makes every coupling network an
        engine-2 integer stack (exact/intlayers.py).  Configs without them
        (v1, the tiny test model) build exactly the networks they always did."""
        return cls(channels, config["hidden"], config["depth"], config["levels"],
                   channel_coupling=bool(config.get("channel_coupling", False)),
                   mean_remainder=bool(config.get("mean_remainder", False)),
                   deep_levels=bool(config.get("deep_levels", False)),
                   edge_bins=bool(config.get("edge_bins", False)),
                   mixture_components=int(config.get("mixture_components", 1)),
                   engine=int(config.get("engine", 1)))

    def mixture_layers(self) -> list[tuple[nn.Module, int]]:
        """Every coupling's last layer: the edges predict two sub-lattices, the centres one."""
        return [(stack.convs[-1], groups * self.channels) for level in self.levels
                for stack, groups in ((level.edges, 2), (level.centres, 1))]

    # -- the one traversal ---------------------------------------------------
    def adaptable_parameters(self, selection: str) -> set[str]:
        """Names of the parameters that online adaptation may change under ``selection``.

        "last": the output layer of every predictor and the final prior (they
        set means and scales directly; no gradient flows into earlier layers);
        "bias": every bias and the final prior; "all": everything.
        """
        names = {name for name, _ in self.named_parameters()}
        prior = {"final_mean", "final_log_scale"}
        if selection == "all":
            return names
        if selection == "bias":
            return {name for name in names if name.endswith(".bias")} | prior
        if selection == "last":
            last = {}
            for name in names:
                if ".convs." in name:
                    stack, rest = name.split(".convs.")
                    last[stack] = max(last.get(stack, 0), int(rest.split(".")[0]))
            return {name for name in names if ".convs." in name
                    and int(name.split(".convs.")[1].split(".")[0]) == last[name.split(".convs.")[0]]} | prior
        raise ValueError(f"unknown parameter selection {selection!r}")

    def parts(self, height: int, width: int) -> list[Levels]:
        """The factors of a batch of height x width tiles cut into parts that share no parameter,
        coarsest first: the prior with every level but the finest, then the finest level alone
        (about half of an RGB batch's work; empty for tiles too small for a level), or one part
        when one predictor serves every level.  The parts own the same parameters whatever the
        tile size.  On the encoder's side each part needs only the pixels
        (``analyse_part``); on the decoder's side a part needs the image the coarser
        parts decoded (``decode_part``); its gradients reach only its own parameters
        (``part_parameters``), and exact Adam is elementwise, so the parts can adapt apart."""
        count = len(level_sizes(height, width, self.deep_levels)) - 1
        every = Levels({FINAL, *range(count)})
        if len(self.levels) < 2:
            return [every]
        return [every - {0}, every & {0}]

    def split_parameters(self) -> tuple[set[str], set[str]] | None:
        """The parameters of the first and of the second of ``parts`` for every tile size (the
        finest level's predictor, and the rest), or None where one predictor serves every level."""
        if len(self.levels) < 2:
            return None
        finest = self.part_parameters(Levels({0}))
        return {name for name, _ in self.named_parameters()} - finest, finest

    def part_parameters(self, levels: Levels) -> set[str]:
        """The names of the parameters that the factors of ``levels`` depend on (a predictor
        serves every level from its index on, ``_predictor``)."""
        used = {f"levels.{min(level, len(self.levels) - 1)}." for level in levels if level != FINAL}
        names = {name for name, _ in self.named_parameters() if name.startswith(tuple(used))}
        return names | ({"final_mean", "final_log_scale"} if FINAL in levels else set())

    def _predictor(self, level: int) -> LevelPredictor:
        return self.levels[min(level, len(self.levels) - 1)]

    def _traverse(self, shape, take: Take, levels: Levels | None = None, y: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """Every factor, coarsest first; returns the image.  ``levels`` (``parts``): only
        the prior ("final") and those levels, which must follow each other, starting from
        ``y``, the image at the scale of the first of them's input (None: from the prior)."""
        batch, channels, height, width = shape
        sizes = level_sizes(height, width, self.deep_levels)
        if levels is None or FINAL in levels:
            y = take((FINAL,), *self._prior((batch, channels, *sizes[-1])))
        for level in reversed(range(len(sizes) - 1)):
            if levels is None or level in levels:
                y = merge_sublattices(y, *self._level(level, y, take))[:, :, :sizes[level][0], :sizes[level][1]]
        return y

    def _prior(self, final_shape: tuple) -> tuple:
        """(mean, log_scale, logits, offset) of the final prior's factor over the coarsest image."""
        dtype = self.final_mean.dtype
        mean = (quantize_activation(self.final_mean) + PIXEL_CENTER).view(1, -1, 1, 1).expand(final_shape)
        log_scale = quantize_activation(self.final_log_scale).view(1, -1, 1, 1).expand(final_shape)
        logits = None
        if self.components > 1:  # K equal components: the one logistic, in the factors' common shape
            components = (self.components, *final_shape)
            mean, log_scale = mean.unsqueeze(0).expand(components), log_scale.unsqueeze(0).expand(components)
            logits = torch.zeros(components, dtype=dtype)
        return mean, log_scale, logits, torch.zeros(final_shape, dtype=dtype)

    def _level(self, level: int, s0: torch.Tensor, take: Take) -> tuple:
        """One level's two couplings given its s0 (the image at the next coarser scale): (s1, s2, s3)."""
        predictor = self._predictor(level)
        base = torch.cat([(s0 + next_along(s0, 3)) * 0.5, (s0 + next_along(s0, 2)) * 0.5], dim=1)
        s12 = self._coupling(predictor.edges, context(s0), base, take, (level, "edges"))
        s1, s2 = s12.chunk(2, dim=1)
        base = (s1 + next_along(s1, 2) + s2 + next_along(s2, 3)) * 0.25
        return s1, s2, self._coupling(predictor.centres, context(s0, s1, s2), base, take, (level, "centres"))

    def _traverse_known(self, pixels: torch.Tensor, take: Take, levels: Levels) -> None:
        """``_traverse`` of a known batch restricted to ``levels`` (any of them): each level's
        input is the pixels at the next coarser scale, which the full traversal rebuilds from
        the levels below it, so each factor sees the same values."""
        scales = [pixels]
        for _ in range(len(level_sizes(pixels.shape[2], pixels.shape[3], self.deep_levels)) - 1):
            scales.append(sublattices(pad_to_even(scales[-1]))[0])
        if FINAL in levels:
            take((FINAL,), *self._prior(scales[-1].shape))
        for level in reversed(range(len(scales) - 1)):
            if level in levels:
                self._level(level, scales[level + 1], take)

    def _coupling(self, net, features, base, take: Take, key) -> torch.Tensor:
        """Predict one group of sub-lattices (base has their layout: sub-lattice-major)."""
        predicted = base.shape[1]
        output = net(features)
        extra_blocks = extra_outputs(self.components)
        extra_start = output.shape[1] - extra_blocks * predicted
        if not self.channel_coupling:
            translation, mean, log_scale, *extra = output_pieces(
                output, [slice(start, start + predicted) for start in range(0, 3 * predicted, predicted)]
                + [slice(extra_start + b * predicted, extra_start + (b + 1) * predicted) for b in range(extra_blocks)])
            offset = round_to_integer(base + translation)
            return take(key, *self._mixture(mean, log_scale, extra), offset)
        channels = self.channels
        pairs = coefficient_count(channels)
        coefficients_end = 3 * predicted + pairs * predicted // channels
        # Channel c of every sub-lattice in the group: c, c + C, ...; coefficient
        # p of every sub-lattice: p, p + pairs, ...  Pair p = (c, j), j < c, in
        # the order (1,0), (2,0), (2,1).  Each channel's pieces of the output, in
        # its order: translation, mean, log-scale, its coefficients, its extra blocks.
        layout, counts, pair = [], [], 0
        for c in range(channels):
            pieces = [slice(block * predicted + c, (block + 1) * predicted, channels) for block in range(3)]
            pieces += [slice(3 * predicted + pair + j, coefficients_end, pairs) for j in range(c)]
            pieces += [slice(extra_start + b * predicted + c, extra_start + (b + 1) * predicted, channels)
                       for b in range(extra_blocks)]
            pair += c
            layout += pieces
            counts.append(len(pieces))
        pieces = output_pieces(output, layout)
        values, deviations, at = [], [], 0
        for c in range(channels):
            translation, mean, log_scale = pieces[at:at + 3]
            coefficients = pieces[at + 3:at + 3 + c]
            extra = pieces[at + 3 + c:at + counts[c]]
            at += counts[c]
            pick = slice(c, None, channels)
            shift = base[:, pick] + translation
            if c:
                cross = sum(torch.clamp(coefficients[j], -COEFFICIENT_LIMIT, COEFFICIENT_LIMIT) * deviations[j]
                            for j in range(c))
                shift = shift + quantize_activation(cross)
            offset = round_to_integer(shift)
            centre = mean
            if self.mean_remainder:
                centre = centre + (shift - offset)
            value = take(key + (c,), *self._mixture(centre, log_scale, extra), offset)
            values.append(value)
            deviations.append(value - base[:, pick])
        batch, groups, height, width = values[0].shape
        return torch.stack(values, dim=2).reshape(batch, groups * channels, height, width)

    def _mixture(self, mean, log_scale, extra) -> tuple:
        """(mean, log_scale, logits) of a factor: single tensors, or K components first (mixtures)."""
        if self.components == 1:
            return mean, log_scale, None
        return mixture_stack(mean, log_scale, extra, self.components)

    # -- the model API ------------------------------------------------------
    def _targets(self, pixels: torch.Tensor) -> dict:
        targets = {}
        y = pixels
        for level in range(len(level_sizes(pixels.shape[2], pixels.shape[3], self.deep_levels)) - 1):
            s0, s1, s2, s3 = sublattices(pad_to_even(y))
            targets[(level, "edges")] = torch.cat([s1, s2], dim=1)
            targets[(level, "centres")] = s3
            y = s0
        targets[(FINAL,)] = y
        return targets

    def _target(self, targets: dict, key: tuple) -> torch.Tensor:
        """A factor's target; keys with a third element name one channel of a coupling."""
        if len(key) == 3:
            return targets[key[:2]][:, key[2]::self.channels]
        return targets[key]

    def analyse(self, pixels: torch.Tensor, with_loss: bool = True):
        """One forward pass over a known batch: its NLL and the factors to code.

        Returns (loss, factors).  loss is what ``nll`` returns (differentiable
        when autograd is on; None without ``with_loss``); factors holds, in the
        order the decoder meets them, each factor's (latents, mean, log_scale),
        detached, for ``push``.  The encoder codes and adapts from this one
        pass: it is the same graph on the same weights as ``nll``, so the
        gradients are bit for bit those of a separate ``nll(pixels)``.
        """
        terms, factors = self._analyse(pixels, with_loss, None)
        return (torch.stack(terms).sum() if with_loss else None), factors

    def analyse_part(self, pixels: torch.Tensor, levels: Levels, with_loss: bool = True) -> tuple[list, list]:
        """``analyse`` of one part of ``parts``: (its loss terms, its factors).

        The factors of the prior and of ``levels`` have the values the whole pass gives them,
        and so do the terms (one 0-d tensor per factor, in the factors' order): the parts,
        coarsest first, give the whole pass's factors, and the sum of all their terms stacked
        in that order is the whole pass's loss, bit for bit."""
        return self._analyse(pixels, with_loss, levels)

    def _analyse(self, pixels: torch.Tensor, with_loss: bool, levels: Levels | None) -> tuple[list, list]:
        pixels = pixels.to(self.final_mean.dtype)
        targets = self._targets(pixels)
        terms, factors = [], []

        def take(key, mean, log_scale, logits, offset):
            target = self._target(targets, key)
            latents = target - offset
            bounds = self._bounds(offset)
            if logits is None:
                factors.append((latents.detach(), mean.detach(), log_scale.detach(), *bounds))
            else:
                factors.append((latents.detach(), mean.detach(), log_scale.detach(), logits.detach(), *bounds))
            if with_loss:
                terms.append(self._nll(latents, mean, log_scale, logits, bounds).sum())
            return target

        if levels is None:
            self._traverse(pixels.shape, take)
        else:
            self._traverse_known(pixels, take, levels)
        return terms, factors

    def _bounds(self, offset: torch.Tensor) -> tuple:
        """The latents' range z = x - offset for x in [0, 255] (with edge bins), else ()."""
        if not self.edge_bins:
            return ()
        offset = offset.detach()
        return -offset, PIXEL_MAX - offset

    def _nll(self, latents, mean, log_scale, logits, bounds) -> torch.Tensor:
        if logits is None:
            return nll_bits(latents, mean, log_scale, self.tables, *bounds)
        return mixture_nll_bits(latents, mean, log_scale, logits, self.tables, *bounds)

    def nll(self, pixels: torch.Tensor) -> torch.Tensor:
        """Total negative log-likelihood of a batch in bits (differentiable)."""
        return self.analyse(pixels)[0]

    @torch.no_grad()
    def tile_bits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Each tile's bits, from one forward pass: every factor's latents are laid out tile
        first, so its bits summed over all but the first dimension are the tile's."""
        pixels = pixels.to(self.final_mean.dtype)
        targets = self._targets(pixels)
        terms = []

        def take(key, mean, log_scale, logits, offset):
            target = self._target(targets, key)
            bits = self._nll(target - offset, mean, log_scale, logits, self._bounds(offset))
            terms.append(bits.reshape(pixels.shape[0], -1).sum(1))
            return target

        self._traverse(pixels.shape, take)
        return torch.stack(terms).sum(0)

    @torch.no_grad()
    def factor_tile_bits(self, factors: list, tiles: int, wanted=None) -> torch.Tensor:
        """``tile_bits`` from ``analyse``'s factors: the same terms, laid out tile first.

        With ``wanted`` (B booleans), only those tiles' terms are computed: the NLL is
        elementwise, so theirs are the values the whole batch gives, and they are summed in
        a tensor of the batch's shape (zeros elsewhere) by the same reductions, so each wanted
        tile's bits are the same float64 value bit for bit; the other tiles' values are 0."""
        wanted = None if wanted is None else torch.as_tensor(wanted, dtype=torch.bool)
        pick = None if wanted is None or bool(wanted.all()) else torch.nonzero(wanted).reshape(-1)
        components = self.components > 1  # means, log-scales and logits have the K components first
        terms = []
        for factor in factors:
            latents, mean, log_scale = factor[:3]
            logits, bounds = (factor[3], factor[4:]) if components else (None, factor[3:])
            if pick is None:
                bits = self._nll(latents, mean, log_scale, logits, bounds)
            else:
                tile_dim = 1 if components else 0
                part = self._nll(latents[pick], mean.index_select(tile_dim, pick),
                                 log_scale.index_select(tile_dim, pick),
                                 None if logits is None else logits.index_select(1, pick),
                                 tuple(bound[pick] for bound in bounds))
                bits = torch.zeros(latents.shape, dtype=part.dtype)
                bits[pick] = part
            terms.append(bits.reshape(tiles, -1).sum(1))
        return torch.stack(terms).sum(0)

    def push(self, factors: list, encoder) -> None:
        """Queue the factors from ``analyse`` on an entropy encoder, in order."""
        if self.components > 1:
            push_mixture_factors(encoder, self.tables, factors)
        else:
            push_factors(encoder, self.tables, factors)

    def coded_intervals(self, factors: list) -> CodedIntervals | None:
        """What ``push`` lays on the stack for these factors, worked out now (a part's, in the
        worker of adapt/parts.py), for a later ``push`` of them in their place; None where
        ``push`` works them out otherwise (one logistic per latent, or no compiled loops)."""
        if self.components == 1 or not native.available() or not factors:
            return None
        return coded_intervals(self.tables, factors)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, encoder, initial: bool = True) -> None:
        """Queue a batch on ``encoder`` (flows never chain: ``initial`` is always True)."""
        self.push(self.analyse(pixels, with_loss=False)[1], encoder)

    @torch.no_grad()
    def decode(self, decoder, shape, initial: bool = True) -> torch.Tensor:
        return self._decode(decoder, shape, with_loss=False)[0]

    @torch.enable_grad()
    def decode_with_loss(self, decoder, shape, initial: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode a batch and return (pixels, the differentiable ``nll`` of them).

        The decoding pass is the forward pass of ``nll`` on the decoded
        pixels (each factor's prediction sees exactly the values ``nll``
        would give it), so adapting needs no second forward pass.
        """
        return self._decode(decoder, shape, with_loss=True)

    def decode_part(self, decoder, shape, levels: Levels, y: torch.Tensor | None = None,
                    with_loss: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``decode_with_loss`` of one part of ``parts``: pops the prior and those levels
        (coarsest first) from ``decoder``, starting from ``y`` (the image at the scale above
        them, which the coarser parts decoded; None for the part with the prior).  Returns
        (the image at the finest of them's scale, their differentiable NLL)."""
        with torch.set_grad_enabled(with_loss):
            return self._decode(decoder, shape, with_loss, levels, y)

    def _decode(self, decoder, shape, with_loss: bool, levels: Levels | None = None, y: torch.Tensor | None = None):
        terms = []

        def take(key, mean, log_scale, logits, offset):
            bounds = self._bounds(offset)
            if logits is None:
                latents = pop_factor(decoder, self.tables, mean.detach(), log_scale.detach(), bounds=bounds)
            else:
                latents = pop_mixture_factor(decoder, self.tables, mean.detach(), log_scale.detach(),
                                             logits.detach(), *bounds)
            # Exact: integers far below 2**53.  The pixels carry no graph, as
            # nll's targets do not; the loss term is nll's (target - offset).
            target = latents + offset.detach()
            if with_loss:
                terms.append(self._nll(target - offset, mean, log_scale, logits, bounds).sum())
            return target

        pixels = self._traverse(shape, take, levels, y)
        return pixels, (torch.stack(terms).sum() if with_loss and terms else None)
