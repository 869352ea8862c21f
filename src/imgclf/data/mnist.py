"""MNIST from its four IDX gz files, validated, written as PNGs in the common layout (official test kept)."""

from __future__ import annotations

import gzip
import logging
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.data import TEST_LIST
from imgclf.data.download import fetch_files
from imgclf.errors import BadInput

log = logging.getLogger(__name__)

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # 0x00000803: ubyte, 3 dims; 0x00000801: ubyte, 1 dim
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Parse a gzipped unsigned-byte IDX file; the header's dimensions must account for every byte."""
    path = Path(path)
    try:
        with gzip.open(path) as f:
            data = f.read()
    except (EOFError, OSError, zlib.error) as exc:
        raise BadInput(f"{path.name}: truncated or corrupt gzip ({exc})") from exc
    if len(data) < 4 or struct.unpack(">I", data[:4])[0] != magic:
        found = data[:4].hex() if len(data) >= 4 else "nothing"
        raise BadInput(f"{path.name}: bad IDX magic {found}, expected {magic:08x}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise BadInput(f"{path.name}: {len(data)} bytes, too short for the header of {ndim} dimensions it announces")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)  # Python's ints: numpy's int64 product wraps round (2**31 * 2**31 * 4 is 0)
    if len(data) - header != expected:
        raise BadInput(
            f"{path.name}: header says {'x'.join(map(str, dims))} = {expected} bytes of data, "
            f"file has {len(data) - header}; the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_pair(images_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) and labels (N,) of one MNIST split, checked against each other."""
    images, labels = read_idx(images_path, IMAGES_MAGIC), read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise BadInput(
            f"{Path(images_path).name} has {len(images)} images but {Path(labels_path).name} has {len(labels)} labels"
        )
    if labels.size and labels.max() > 9:
        raise BadInput(f"{Path(labels_path).name}: label {labels.max()} is not a digit")
    return images, labels


def write_images(out_dir: Path, images: np.ndarray, labels: np.ndarray, prefix: str) -> list[str]:
    """PNG per image under out_dir/<digit>/; returns the relative paths written."""
    paths = []
    for i, (image, label) in enumerate(zip(images, labels)):
        rel = f"{label}/{prefix}_{i:05d}.png"
        (out_dir / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(out_dir / rel)
        paths.append(rel)
    return paths


def fetch_mnist(
    out_dir: str | Path, mirrors: Sequence[str], checksums: Mapping[str, str | None], download_dir: str | Path
) -> int:
    """Download (or reuse) the IDX files, validate them, write PNGs; t10k becomes the official test list."""
    out_dir = Path(out_dir)
    names = [name for pair in FILES.values() for name in pair]
    paths = fetch_files({n: checksums.get(n) for n in names}, mirrors, download_dir)
    test_paths, total = [], 0
    for split, (images_name, labels_name) in FILES.items():
        images, labels = read_pair(paths[images_name], paths[labels_name])
        written = write_images(out_dir, images, labels, split)
        total += len(written)
        if split == "test":
            test_paths = written
        log.info("MNIST %s: %d images of %dx%d", split, len(images), *images.shape[1:])
    (out_dir / TEST_LIST).write_text("".join(f"{p}\n" for p in test_paths))
    return total
