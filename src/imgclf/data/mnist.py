"""MNIST from its four IDX gz files, validated, written as PNGs in the common layout (official test kept)."""

from __future__ import annotations

import gzip
import logging
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from imgclf.data import TEST_LIST
from imgclf.data.download import fetch_files
from imgclf.errors import BadInput

log = logging.getLogger(__name__)

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # 0x00000803: ubyte, 3 dims; 0x00000801: ubyte, 1 dim
# what MNIST's files hold (train: 60,000, t10k: 10,000, images 28 x 28): a header claiming more is refused before
# its data is decompressed, so a file's memory is at most 47 MB whatever it declares or unpacks to
MAX_ITEMS = 60_000
ITEM_SHAPE = {IMAGES_MAGIC: (28, 28), LABELS_MAGIC: ()}
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Parse a gzipped unsigned-byte IDX file as it decompresses: the header first (magic, dimensions, each within
    what MNIST's files hold), then exactly the bytes it declares, and nothing after them. A file that claims or
    holds more is refused having decompressed at most MAX_ITEMS images' bytes, whatever it would unpack to."""
    path = Path(path)
    try:
        with gzip.open(path) as f:
            dims = _read_header(path.name, f, magic)
            expected = math.prod(dims)
            data = f.read(expected)
            longer = bool(f.read(1))  # one byte past the end: a file longer than its header is not what it says
    except (EOFError, OSError, zlib.error) as exc:
        raise BadInput(f"{path.name}: truncated or corrupt gzip ({exc})") from exc
    said = f"{path.name}: header says {'x'.join(map(str, dims))} = {expected} bytes of data"
    if longer:
        raise BadInput(f"{said}, file has more; an IDX file holds exactly what its header declares")
    if len(data) != expected:
        raise BadInput(f"{said}, file has {len(data)}; the file is truncated or corrupt")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _read_header(name: str, f: BinaryIO, magic: int) -> tuple[int, ...]:
    """The dimensions of the IDX header at the start of `f`, checked against `magic` (unsigned bytes, its number of
    dimensions) and against what MNIST's files hold: at most MAX_ITEMS, each image ITEM_SHAPE."""
    head = f.read(4)
    if len(head) < 4 or struct.unpack(">I", head)[0] != magic:
        raise BadInput(
            f"{name}: bad IDX magic {head.hex() if len(head) == 4 else 'nothing'}, expected {magic:08x} "
            f"(unsigned bytes, {magic & 0xFF} dimensions)"
        )
    ndim = magic & 0xFF
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise BadInput(f"{name}: {4 + len(raw)} bytes, too short for the header of {ndim} dimensions it announces")
    dims = struct.unpack(f">{ndim}I", raw)
    shape = ITEM_SHAPE[magic]
    if dims[0] == 0:  # four such files fetched no image at all, with exit 0
        raise BadInput(f"{name}: header declares 0 items; an MNIST file holds 1 to {MAX_ITEMS:,} (t10k 10,000)")
    if dims[0] > MAX_ITEMS or dims[1:] != shape:
        noun, size = ("images", "x".join(map(str, dims[1:]))) if shape else ("labels", "")
        valid = f"at most {MAX_ITEMS:,} {noun}" + (f" of {'x'.join(map(str, shape))}" if shape else "")
        raise BadInput(f"{name}: header declares {dims[0]} {noun}{f' of {size}' if size else ''}; MNIST holds {valid}")
    return dims


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
    out_dir: str | Path, mirrors: Sequence[str], checksums: Mapping[str, str | None] | None, download_dir: str | Path
) -> int:
    """Download (or reuse) the IDX files, validate them, write PNGs; t10k becomes the official test list."""
    checksums = checksums or {}  # data.checksums=null: none, as for a file whose checksum is null
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
