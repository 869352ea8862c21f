"""In-memory datasets: each split is decoded and resized once, then served as uint8 tensor batches."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..errors import BadInput
from ..paths import CACHE_DIR, IMAGE_DIR, SPLIT_DIR
from ..utils import parallel_map
from .split import read_index, read_labels, read_manifest

# how images become pixels (convert to RGB, resize to a square): part of every pack's key
DECODER = f"pillow-{PIL.__version__}-rgb-square-v1"


class TensorImageDataset(Dataset):
    """uint8 images (N, 3, H, W) and int64 labels; fetches whole batches with one indexing op."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, paths: list[str] | None = None):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.paths = images, labels, paths or []

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]

    def __getitems__(self, indices: list[int]):
        idx = torch.as_tensor(indices)
        return self.images[idx], self.labels[idx]


def _batch_collate(batch):
    # __getitems__ already returns a stacked (images, labels) batch
    return batch


def decode_image(path: str | Path, image_size: int, interpolation: str = "bilinear") -> np.ndarray:
    """Decode any PIL-readable image to RGB (grayscale expanded), resized to a square, as HWC uint8."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.Resampling[interpolation.upper()])
        return np.asarray(img, dtype=np.uint8)


def decode_checked(path: Path, sha256: str | None, image_size: int, interpolation: str = "bilinear") -> np.ndarray:
    """decode_image(), refusing a file whose bytes are not the ones the split's manifest recorded."""
    content = Path(path).read_bytes()
    if sha256 is not None and hashlib.sha256(content).hexdigest() != sha256:
        raise BadInput(
            f"{path} changed since the split stage ran (its sha256 differs from manifest.csv); "
            "rerun split (dvc repro) so the data version follows the images"
        )
    return decode_image(io.BytesIO(content), image_size, interpolation)


def decode_all(
    paths: list[Path], image_size: int, interpolation: str = "bilinear", digests: Sequence[str] | None = None
) -> np.ndarray:
    """Decode and resize every image into one (N, S, S, 3) uint8 array, in parallel for big sets; with `digests`,
    each file must still have the content the manifest recorded."""
    images = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    decode = partial(_decode_item, image_size=image_size, interpolation=interpolation)
    items = list(zip(paths, digests if digests is not None else [None] * len(paths)))
    for i, array in enumerate(parallel_map(decode, items)):
        images[i] = array
    return images


def _decode_item(item: tuple[Path, str | None], image_size: int, interpolation: str) -> np.ndarray:
    return decode_checked(item[0], item[1], image_size, interpolation)


def pack_key(rows: list[tuple[str, str]], digests: Mapping[str, str], image_size: int, interpolation: str) -> str:
    """The pack's cache key: every image's content digest in index order, the size, the resampling and the
    decoder, so an image edited in place (same name, new pixels) or a new Pillow makes a new pack."""
    h = hashlib.sha256(f"{DECODER}|{image_size}|{interpolation}\n".encode())
    for rel, _ in rows:
        if rel not in digests:
            raise BadInput(f"{rel} is indexed but missing from the split's manifest.csv; rerun split (dvc repro split)")
        h.update(f"{rel},{digests[rel]}\n".encode())
    return h.hexdigest()[:16]


def packed_split(
    root: Path,
    rows: list[tuple[str, str]],
    digests: Mapping[str, str],
    image_size: int,
    tag: str,
    interpolation: str = "bilinear",
) -> np.ndarray:
    """The split's images resized once and packed in data/<ds>/cache/, keyed by their content (pack_key)."""
    cache = root / CACHE_DIR / f"{tag}-{image_size}px-{pack_key(rows, digests, image_size, interpolation)}.npy"
    if cache.is_file():
        return np.load(cache)
    expected = [digests[rel] for rel, _ in rows]
    images = decode_all([root / IMAGE_DIR / rel for rel, _ in rows], image_size, interpolation, expected)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, images)
    os.replace(tmp, cache)  # a half-written cache never looks complete
    return images


def load_split(
    root: str | Path, split: str, subset: str, image_size: int, interpolation: str = "bilinear"
) -> TensorImageDataset:
    """Load one split (`train|val|test`) of the data set in `root`, full or its `sample` subset, into memory."""
    if subset not in ("full", "sample"):
        raise BadInput(f"unknown data.subset '{subset}'; choose one of: full, sample")
    root = Path(root)
    split_dir = root / SPLIT_DIR / ("sample" if subset == "sample" else "")
    index_file = split_dir / f"{split}.csv"
    rows = read_index(index_file)
    class_names = read_labels(root / SPLIT_DIR / "labels.txt")
    class_to_idx = {c: i for i, c in enumerate(class_names)}
    unknown = sorted({label for _, label in rows} - class_to_idx.keys())
    if unknown:
        raise BadInput(f"{index_file} has labels {unknown} missing from labels.txt")
    images = packed_split(root, rows, read_manifest(root / SPLIT_DIR), image_size, f"{subset}-{split}", interpolation)
    labels = torch.tensor([class_to_idx[label] for _, label in rows], dtype=torch.int64)
    return TensorImageDataset(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, [r for r, _ in rows])


def build_loader(
    dataset: TensorImageDataset,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """Whole batches fetched from memory (no per-sample collate); under torchrun, this rank's share of each batch.

    Training batches come from one seeded permutation split across ranks, so N processes see the global batches
    one process would; evaluation batches cover each sample exactly once over all ranks.
    """
    from ..distributed import ShardedBatchSampler, rank, shard_for_eval, world_size

    if not isinstance(batch_size, int) or batch_size < 1:
        raise BadInput(f"trainer.batch_size must be a positive integer; got {batch_size!r}")
    if shuffle:
        sampler = ShardedBatchSampler(len(dataset), batch_size, True, generator, rank(), world_size())
    else:
        sampler = shard_for_eval(len(dataset), batch_size)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=_batch_collate, pin_memory=pin_memory)
