"""The one contract every model family keeps, and the decorator that registers a family.

The adaptation engine (adapt/engine.py), the checkpoint loader
(models/registry.py) and pretraining (models/pretrain.py, training.py) talk to
a model only through ``CodingModel``: they never ask which class a network is.
So a new family is one module, a subclass of ``CodingModel`` under
``@register_family(name, architecture=...)``, plus its import in
models/registry.py; docs/MODELS.md ("Adding a model family") walks through it.

A family's network models images of one channel count (1 = L, 3 = RGB) and
has two sides that must agree bit for bit:

* the loss (``nll``): bits of a batch, differentiable, computed by the exact
  engine (float64 on the exact core's grids) so that the decoder, holding the
  same pixels and weights, replays the same adaptation step;
* the coder (``encode``/``decode``): a batch on an ANS coder from
  ``new_encoder`` and back from ``new_decoder``, at about the loss's bits.

Class attributes say what the engine may do with the family (chain batches on
one stack, back off the guard); methods with a default are optional.
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Callable, ClassVar

import numpy as np
import torch
from torch import nn

from ..coding.ans import Decoder, Encoder
from ..exact.logistic import LogisticTables


class CodingModel(nn.Module, metaclass=ABCMeta):
    """The network of one family for one channel count, as the engine and the loader see it."""

    # Set by @register_family: the name checkpoints and archive headers carry
    # (config and manifest key ``family``), and the manifest's ``architecture``.
    family: ClassVar[str] = ""
    architecture: ClassVar[str] = ""
    # Config keys the family reads (``family`` is always allowed); a checkpoint with
    # others was made by a newer version and is refused rather than misread.
    config_keys: ClassVar[frozenset[str]] = frozenset()
    # The config `osoa-zip pretrain --family NAME` starts a new model from.
    default_config: ClassVar[dict] = {}
    # Consecutive batches may share one coder stream (format 1.4's chains): only for
    # coders that are stacks (``new_encoder`` gives a coder that also pops, with
    # ``num_bits``), and ``encode``/``decode`` then honour ``initial``.
    chains_batches: ClassVar[bool] = False
    # The encoder's guard compares θ0 on every batch instead of backing off after
    # clear wins (for families whose adapted loss swings from batch to batch).
    guard_every_batch: ClassVar[bool] = False
    # Logistics per mixture in the likelihood (1: none); pretraining spreads new components.
    components: int = 1

    # The exact core's integer tables: models/registry.py sets them after loading the weights.
    tables: LogisticTables | None

    @classmethod
    @abstractmethod
    def from_config(cls, channels: int, config: dict) -> "CodingModel":
        """The network for ``channels``-channel images that the checkpoint config describes."""

    @staticmethod
    def new_encoder():
        """A coder for one new stream (default: a queue of symbols, laid on an ANS stack at ``finish``)."""
        return Encoder()

    @staticmethod
    def new_decoder(data: bytes):
        """The decoder of a stream ``new_encoder`` wrote (it has ``check_finished``)."""
        return Decoder(data)

    @abstractmethod
    def nll(self, pixels: torch.Tensor) -> torch.Tensor:
        """The loss adaptation steps on: the batch's bits (B x C x H x W pixels 0..255), differentiable.

        In float64 it must be replayable: the same pixels and weights give the same bits on
        the decoder (randomness only from a counter-based hash of the pixels, exact/noise.py).
        """

    def analyse(self, pixels: torch.Tensor, with_loss: bool = True) -> tuple[torch.Tensor | None, object]:
        """One forward pass over a batch the encoder knows: (loss or None, factors or None).

        Factors are what ``push`` codes, detached from the weights, so that the engine codes
        them on its helper thread while the update changes the weights.  None (the default)
        means the model codes from the pixels with its current weights: the engine then
        calls ``encode`` before it adapts.
        """
        return (self.nll(pixels) if with_loss else None), None

    @torch.no_grad()
    def tile_bits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Each tile's bits under these weights (B values, no gradient): what per-image triage
        sets against a file (triage.py), for tiles of many images in one batch.  The default
        is ``nll`` tile by tile; a family whose loss is a sum over tiles may do it in one pass."""
        return torch.stack([self.nll(pixels[i:i + 1]) for i in range(pixels.shape[0])])

    def factor_tile_bits(self, factors, tiles: int, wanted=None) -> torch.Tensor | None:
        """Each of the ``tiles`` tiles' bits (B values) from the factors ``analyse`` returned,
        without another pass through the network: a frozen model's coding pass then tells
        per-image triage what each image costs exactly (pack.py).  ``wanted`` (B booleans, or
        None for all): the tiles whose bits are asked for; the others' values are not theirs.
        None (the default): the family cannot tell from its factors."""
        return None

    def push(self, factors, coder) -> None:
        """Code the factors ``analyse`` returned (only families whose ``analyse`` returns some)."""
        raise NotImplementedError(f"the {self.family} family's analyse returns no factors to push")

    @abstractmethod
    def encode(self, pixels: torch.Tensor, coder, initial: bool = True) -> None:
        """Code a batch onto ``coder``.  ``initial`` False (chaining families only): the stack
        already holds later batches, whose bits this batch may borrow."""

    @abstractmethod
    def decode(self, coder, shape: tuple[int, int, int, int], initial: bool = True) -> torch.Tensor:
        """The pixels (float64) of a batch of ``shape`` coded by ``encode(..., initial)``."""

    def decode_with_loss(self, coder, shape: tuple[int, int, int, int], initial: bool = True
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(pixels, their ``nll`` or None): a family whose decoding pass is ``nll``'s forward pass
        returns the loss (differentiable) and saves the adaptation step a forward pass."""
        return self.decode(coder, shape, initial), None

    # -- parts: two pieces of a batch that two processes can adapt apart (adapt/parts.py) --

    def split_parameters(self) -> tuple[set[str], set[str]] | None:
        """The names of the parameters that the first and the second of ``parts`` depend on,
        the same for every tile size and sharing none; None (the default): the family cannot
        split a batch, and one process does it all."""
        return None

    def parts(self, height: int, width: int) -> list:
        """The two parts of a batch of height x width tiles (opaque to the engine), in the
        order the decoder meets their symbols; only with ``split_parameters``."""
        raise NotImplementedError(f"the {self.family} family cannot split a batch")

    def analyse_part(self, pixels: torch.Tensor, part, with_loss: bool = True) -> tuple[list, object]:
        """``analyse`` of one of ``parts``: (its loss terms, its factors).  The parts' factors,
        first part first, are ``analyse``'s, and the sum of all their terms stacked in that
        order is its loss, bit for bit; each part's terms depend only on its own parameters."""
        raise NotImplementedError(f"the {self.family} family cannot split a batch")

    def decode_part(self, coder, shape: tuple[int, int, int, int], part, image: torch.Tensor | None = None,
                    with_loss: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``decode_with_loss`` of one of ``parts``: (the image so far, the part's loss).  The
        first part starts from nothing; the second from the first's image, on a coder resumed
        where the first stopped (``Decoder.resume``)."""
        raise NotImplementedError(f"the {self.family} family cannot split a batch")

    def adaptable_parameters(self, selection: str) -> set[str]:
        """Names of the parameters adaptation changes under ``selection`` (AdaptationConfig's
        ``parameters``/``gray_parameters``); the default: all of them, whatever the selection."""
        return {name for name, _ in self.named_parameters()}

    def mixture_layers(self) -> list[tuple[nn.Module, int]]:
        """Pretraining: each convolution whose output ends with a mixture's extra blocks
        (models/mixture.py), and how many values each block predicts; none by default."""
        return []


_FAMILIES: dict[str, type[CodingModel]] = {}


def tile_bits_of(network: CodingModel, tiles: np.ndarray) -> np.ndarray:
    """``network.tile_bits`` of N x C x h x w uint8 tiles, as float64 values: what triage.py
    measures, in the command's process or in the worker of adapt/parts.py (one function,
    so the same bits either way)."""
    return network.tile_bits(torch.from_numpy(tiles.astype(np.float64))).numpy()


def register_family(name: str, architecture: str) -> Callable[[type[CodingModel]], type[CodingModel]]:
    """Class decorator: checkpoints whose config says ``family: name`` build this class.

    ``architecture`` is what the manifest records beside the family.  A name is
    registered once: a second class under it would change how existing archives decode.
    """
    def register(cls: type[CodingModel]) -> type[CodingModel]:
        if not (isinstance(cls, type) and issubclass(cls, CodingModel)):
            raise TypeError(f"model family {name!r}: {cls!r} is not a CodingModel")
        if name in _FAMILIES:
            raise ValueError(f"model family {name!r} is registered already ({_FAMILIES[name].__qualname__})")
        cls.family, cls.architecture = name, architecture
        _FAMILIES[name] = cls
        return cls
    return register


def registered_families() -> dict[str, type[CodingModel]]:
    """name -> class of every family registered so far (models/registry.py looks them up)."""
    return dict(_FAMILIES)
