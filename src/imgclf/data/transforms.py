"""Batched augmentation on uint8 image tensors, run on the training device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import BadInput


class RandomShiftFlip:
    """Translate each image by up to `max_shift` px in x and y (zero fill), and mirror half of them with `hflip`."""

    def __init__(self, max_shift: int, hflip: bool = False, seed: int = 0):
        if max_shift < 0:
            raise BadInput(f"data.augment.max_shift must be >= 0; got {max_shift}")
        self.max_shift, self.hflip = max_shift, hflip
        self.generator = torch.Generator().manual_seed(seed)  # its own stream: augmenting does not move the others

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        out = images
        if self.max_shift:
            s = self.max_shift
            padded = F.pad(images, (s, s, s, s))
            dy, dx = torch.randint(0, 2 * s + 1, (2, n), generator=self.generator).tolist()
            out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
        if self.hflip:
            flip = (torch.rand(n, generator=self.generator) < 0.5).to(out.device)
            out = torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)
        return out


def build_augment(max_shift: int = 0, hflip: bool = False, seed: int = 0) -> RandomShiftFlip | None:
    """The training augmentation for a data set, or None when it does nothing."""
    return RandomShiftFlip(max_shift, hflip, seed) if (max_shift or hflip) else None
