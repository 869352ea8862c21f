"""In-memory datasets: each split is decoded and resized once, then served as uint8 tensor batches."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from . import IMAGE_DIR, SPLIT_DIR, dataset_dir
from .split import read_index, read_labels


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


def decode_image(path: str | Path, image_size: int) -> np.ndarray:
    """Decode any PIL-readable image to RGB (grayscale expanded), resized to a square, as HWC uint8."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def load_split(data_root: str | Path, name: str, split: str, subset: str, image_size: int) -> TensorImageDataset:
    """Load one split (`train|val|test`) of a data set, full or its `sample` subset, into memory."""
    if subset not in ("full", "sample"):
        raise ValueError(f"unknown data.subset '{subset}'; choose one of: full, sample")
    root = dataset_dir(data_root, name)
    split_dir = root / SPLIT_DIR / ("sample" if subset == "sample" else "")
    rows = read_index(split_dir / f"{split}.csv")
    class_names = read_labels(root / SPLIT_DIR / "labels.txt")
    class_to_idx = {c: i for i, c in enumerate(class_names)}
    unknown = sorted({label for _, label in rows} - class_to_idx.keys())
    if unknown:
        raise ValueError(f"{split_dir / (split + '.csv')} has labels {unknown} missing from labels.txt")
    images = np.empty((len(rows), image_size, image_size, 3), dtype=np.uint8)
    for i, (rel, _) in enumerate(rows):
        images[i] = decode_image(root / IMAGE_DIR / rel, image_size)
    labels = torch.tensor([class_to_idx[label] for _, label in rows], dtype=torch.int64)
    return TensorImageDataset(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, [r for r, _ in rows])


def build_loader(
    dataset: TensorImageDataset, batch_size: int, shuffle: bool, generator: torch.Generator | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader that fetches whole batches from memory (no per-sample collate)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"trainer.batch_size must be a positive integer; got {batch_size!r}")
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
        collate_fn=_batch_collate, pin_memory=pin_memory,
    )
