"""scikit-learn's handwritten digits, written as PNG files in the common class-folder layout."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


def fetch_digits(out_dir: str | Path) -> int:
    """Write the 1,797 8x8 digit scans as grayscale PNGs under out_dir/<digit>/; return the count."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # pixel values are 0..16 (4x4 blocks counted); stretch them to the 0..255 of an 8-bit image
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    out_dir = Path(out_dir)
    for i, (image, target) in enumerate(zip(pixels, bunch.target)):
        cls_dir = out_dir / str(bunch.target_names[target])
        cls_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(cls_dir / f"{i:04d}.png")
    log.info("wrote %d digit images in %d classes to %s", len(pixels), len(bunch.target_names), out_dir)
    return len(pixels)
