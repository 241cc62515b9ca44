"""Post-training quantisation of v6's coupling networks onto engine 2's conv layers: the NLL change.

  python benchmarks/engine2_ptq.py [--limit 128] [--calibration 64]

No retraining: every coupling ConvStack of idf-sublattice-v6 is replaced by an
exact/intconv.IntConvStack built from its weights (7-bit weights with a scale
per output channel, int8 activations, 16-bit outputs), with power-of-two
activation scales from min/max on *training* images (data/train_*32.npy),
made --clip-bits finer (values beyond are clamped), and
the frozen model's NLL is measured on evaluation images it never saw
(data/eval/tiles32, data/eval/gray32), in bits per sub-pixel, against the
same model on engine 1.  Variants: 8-bit activations x 7-bit weights
everywhere, and with the first conv's weights at 14 bits and the last conv's
input at 16 bits (what issue #15's fake-quantisation measurements recommend).
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from osoa_zip.exact.intconv import IntConvStack
from osoa_zip.exact.layers import ConvStack
from osoa_zip.models.registry import load_model

REPO = Path(__file__).resolve().parents[1]
MODEL = "idf-sublattice-v6"
CONTEXT_EXPONENT = -6  # idf.context: (pixel - 128) / 64, so every input is an integer times 2**-6
VARIANTS = {
    "8-bit activations x 7-bit weights": {},
    "+ first conv weights 14 bits, last conv input 16 bits": {"first_weight_limbs": 2, "last_input_limbs": 2},
}
SETS = {3: ("tiles32", "train_rgb32.npy"), 1: ("gray32", "train_gray32.npy")}


def _eval_pixels(name: str, channels: int, limit: int) -> torch.Tensor:
    paths = sorted((REPO / "data" / "eval" / name).glob("*.png"))[:limit]
    mode = "RGB" if channels == 3 else "L"
    images = [np.asarray(Image.open(p).convert(mode)).reshape(32, 32, channels) for p in paths]
    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy()).long()


def _train_pixels(name: str, count: int) -> torch.Tensor:
    data = np.load(REPO / "data" / name, mmap_mode="r")
    picks = np.linspace(0, len(data) - 1, count).astype(int)
    return torch.from_numpy(np.ascontiguousarray(data[picks]).transpose(0, 3, 1, 2).copy()).long()


class _Patched:
    """Within: ConvStack.forward records its inputs, or runs an engine-2 replacement."""

    def __init__(self, record: dict | None = None, replacements: dict | None = None):
        self.record, self.replacements = record, replacements

    def __enter__(self):
        self.original = ConvStack.forward
        patch = self

        def forward(stack, x):
            if patch.record is not None:
                patch.record.setdefault(id(stack), []).append(x.detach().clone())
            if patch.replacements is not None and id(stack) in patch.replacements:
                ints = x * 2.0 ** -CONTEXT_EXPONENT
                if not torch.equal(ints, torch.round(ints)):
                    raise ValueError("a coupling input is not on the context grid")
                out = patch.replacements[id(stack)].forward_ints(ints.to(torch.int8).permute(0, 2, 3, 1))
                value = torch.ldexp(out.ints.double(), torch.tensor(float(out.exponent), dtype=torch.float64))
                return value.permute(0, 3, 1, 2).to(x.dtype)
            return patch.original(stack, x)

        ConvStack.forward = forward

    def __exit__(self, *exception):
        ConvStack.forward = self.original


def _bpsp(network, pixels: torch.Tensor, batch: int = 64) -> float:
    with torch.no_grad():
        bits = sum(float(network.nll(pixels[i:i + batch].double())) for i in range(0, len(pixels), batch))
    return bits / pixels.numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=128, help="evaluation images per set")
    parser.add_argument("--calibration", type=int, default=64, help="training images for the scales")
    parser.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor")
    parser.add_argument("--clip-bits", type=int, default=1,
                        help="activation scales this many bits finer than min/max (0: min/max)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bundle = load_model(MODEL)
    print(f"{MODEL}, frozen; {args.calibration} training images for the activation scales "
          f"(min/max, {args.clip_bits} bit(s) clipped); {'per-tensor' if args.per_tensor else 'per-channel'} "
          f"weight scales")
    for channels, (eval_name, train_name) in SETS.items():
        network = copy.deepcopy(bundle.network(channels))
        pixels = _eval_pixels(eval_name, channels, args.limit)
        inputs: dict = {}
        with _Patched(record=inputs):
            _bpsp(network, _train_pixels(train_name, args.calibration))
        stacks = {id(m): m for m in network.modules() if isinstance(m, ConvStack)}
        reference = _bpsp(network, pixels)
        print(f"{eval_name} ({len(pixels)} images): engine 1 {reference:.4f} bpsp")
        for label, limbs in VARIANTS.items():
            replacements = {
                key: IntConvStack.from_float([(c.weight.detach(), c.bias.detach()) for c in stacks[key].convs],
                                             inputs[key], CONTEXT_EXPONENT, per_channel=not args.per_tensor,
                                             clip_bits=args.clip_bits, **limbs)
                for key in inputs}
            with _Patched(replacements=replacements):
                quantised = _bpsp(network, pixels)
            print(f"  {label:55s} {quantised:.4f} bpsp  ({(quantised / reference - 1) * 100:+.2f}%)")


if __name__ == "__main__":
    main()
