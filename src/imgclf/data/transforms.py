"""Training augmentation (kornia, batched on the device, random parameters per image) and test-time views.

Why kornia and not torchvision.transforms.v2: v2 draws one set of random parameters per call, so a batch of
images gets the same rotation, crop and jitter unless it loops over the batch in Python; kornia.augmentation draws
them per image and applies them to the whole batch in a few tensor ops, on whichever device the batch is on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from imgclf import contract
from imgclf.contract import TTA_VIEWS
from imgclf.errors import BadInput


class Augment:
    """The preset's kornia ops on a uint8 (N, C, H, W) batch, then a centre crop to `out_size` when the batch is
    larger (the pack holds images at the resize size). Random parameters come from `generator`, its own stream:
    augmenting moves no other stream, and a checkpoint saves and restores it with the others."""

    def __init__(self, ops: Sequence[nn.Module], out_size: int, seed: int = 0):
        self.ops = nn.Sequential(*ops)
        self.out_size = out_size
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255)  # kornia's colour ops expect [0, 1]
        if len(self.ops):
            # kornia samples its parameters from torch's global CPU stream: lend it ours for the call, then put
            # the global state back, so the model's dropout and the loader's shuffling see no difference
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(self.generator.get_state())
                x = self.ops(x)
                self.generator.set_state(torch.get_rng_state())
        return center_crop(x.mul_(255), self.out_size)  # float pixels in 0..255: Preprocess normalises them

    def __repr__(self) -> str:
        return f"Augment({list(self.ops)}, out_size={self.out_size})"


def build_augment(ops: Mapping[str, Mapping] | None, out_size: int, seed: int = 0) -> Augment:
    """The training augmentation from a preset's `ops` (name -> kornia `_target_` and its arguments, in order).

    A `size: null` argument (RandomResizedCrop's) becomes the model's input size.
    """
    from hydra.utils import instantiate

    modules = []
    for name, spec in (ops or {}).items():
        spec = dict(spec) if isinstance(spec, Mapping) else {}
        if not str(spec.get("_target_", "")).startswith("kornia.augmentation."):
            raise BadInput(
                f"augment.ops.{name} must name a kornia.augmentation class in _target_; got {spec.get('_target_')!r}"
            )
        p = spec.get("p", 0.5)  # every kornia op's chance of applying: above 1 it is taken as always, without a word
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise BadInput(f"augment.ops.{name}.p={p!r} is not valid: a probability, a number from 0 to 1")
        if "size" in spec and spec["size"] is None:
            spec["size"] = [out_size, out_size]
        try:
            modules.append(instantiate(spec, _convert_="all"))
        except Exception as exc:  # Hydra's "Error in call to target ...", then the library's own error: keep that
            said = [line for line in str(exc).splitlines() if line.strip()]
            raise BadInput(f"augment.ops.{name} is not valid: {said[-1] if said else type(exc).__name__}") from exc
    return Augment(modules, out_size, seed)


def check_augment(op_sets: Sequence[Mapping[str, Mapping]], out_size: int | None) -> None:
    """Each op of each set made once, as training makes them (`imgclf check`, and train before it seeds or builds
    anything): an argument kornia refuses is one line before the run. A size the weights give (None) is taken as 224:
    the ops' own arguments are what is checked."""
    for ops in op_sets:
        build_augment(ops, out_size or 224)


def center_crop(images, size: int):
    """The centre `size` x `size` of NCHW images (numpy or torch), offsets (H - size) // 2: packs, clients alike."""
    h, w = images.shape[-2:]
    if h < size or w < size:
        raise BadInput(f"cannot centre-crop {h}x{w} images to {size} px")
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]


def tta_views(images: torch.Tensor, size: int, views: Sequence[str]) -> list[torch.Tensor]:
    """The test-time views of a batch of NCHW images stored at the resize size: the centre crop, then `hflip`
    (it mirrored) and `crops` (the four corner crops; when the image has less than size/32 px of margin, it is
    zero-padded to that first, so the corners are shifts of the digit or object)."""
    unknown = sorted(set(views) - set(TTA_VIEWS))
    if unknown:
        raise BadInput(f"unknown test-time views {unknown}; choose from: {', '.join(TTA_VIEWS)}")
    center = center_crop(images, size)
    out = [center]
    if "hflip" in views:
        out.append(center.flip(-1))
    if "crops" in views:
        margin = max(1, size // 32)
        h, w = images.shape[-2:]
        pad_y, pad_x = max(0, size + 2 * margin - h) // 2, max(0, size + 2 * margin - w) // 2
        padded = F.pad(images, (pad_x, pad_x, pad_y, pad_y)) if pad_x or pad_y else images
        h, w = padded.shape[-2:]
        out += [padded[..., y : y + size, x : x + size] for y in (0, h - size) for x in (0, w - size)]
    return out


class Preprocess(nn.Module):
    """uint8 NCHW batch -> normalized float on the batch's device (the GPU does the arithmetic): serving.normalize."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        scaled_mean, scaled_std = contract.scaled_stats(mean, std)
        self.register_buffer("mean", torch.from_numpy(scaled_mean))
        self.register_buffer("std", torch.from_numpy(scaled_std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return contract.normalize(x, self.mean, self.std)
