"""The split stage's data report (DIGITS' "Explore the db"): counts, sizes, samples, skipped files, leakage."""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from . import SPLITS
from .folder import FolderScan, ImageInfo


def class_counts(splits: Mapping[str, list[tuple[str, str]]], class_names: Sequence[str]) -> list[dict]:
    """Rows of (class, split, images) for every class and split: the table behind the bar chart."""
    rows = []
    for split in SPLITS:
        counts = Counter(label for _, label in splits[split])
        rows.extend({"class": c, "split": split, "images": counts.get(c, 0)} for c in class_names)
    return rows


def size_stats(info: Mapping[str, ImageInfo]) -> dict:
    """Width/height min, max, mean and the colour modes found."""
    if not info:
        return {}
    widths = np.array([i.width for i in info.values()])
    heights = np.array([i.height for i in info.values()])
    summary = lambda a: {"min": int(a.min()), "max": int(a.max()), "mean": round(float(a.mean()), 1)}  # noqa: E731
    return {"width": summary(widths), "height": summary(heights),
            "modes": dict(Counter(i.mode for i in info.values()).most_common())}


def cross_split_duplicates(splits: Mapping[str, list[tuple[str, str]]], info: Mapping[str, ImageInfo]) -> list[dict]:
    """Groups of pixel-identical images found in more than one split: leakage between train and test."""
    by_digest: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for split in SPLITS:
        for path, _ in splits[split]:
            by_digest[info[path].digest].append((split, path))
    return [{"digest": d, "images": [{"split": s, "path": p} for s, p in members]}
            for d, members in sorted(by_digest.items()) if len({s for s, _ in members}) > 1]


def build_report(scan: FolderScan, splits: Mapping[str, list[tuple[str, str]]]) -> dict:
    dups = cross_split_duplicates(splits, scan.info)
    return {
        "class_names": scan.class_names,
        "images_per_split": {s: len(splits[s]) for s in SPLITS},
        "images_per_class": {s: dict(sorted(Counter(lbl for _, lbl in splits[s]).items())) for s in SPLITS},
        "image_size": size_stats(scan.info),
        "skipped": {"counts": scan.skipped_counts(), "files": [{"path": p, "reason": r} for p, r in scan.skipped]},
        "cross_split_duplicates": {"groups": len(dups), "examples": dups[:50]},
    }


def plot_class_counts(rows: list[dict], path: str | Path) -> None:
    """Grouped bars: images per class, one colour per split."""
    from ..plots import _pyplot, _save

    plt = _pyplot()
    classes = list(dict.fromkeys(r["class"] for r in rows))
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(classes) + 2), 4))
    width = 0.8 / len(SPLITS)
    for k, split in enumerate(SPLITS):
        counts = [r["images"] for r in rows if r["split"] == split]
        ax.bar(x + k * width, counts, width, label=split)
    ax.set_xticks(x + width, classes, rotation=90 if len(classes) > 12 else 0)
    ax.set(ylabel="images", title="images per class per split")
    ax.legend()
    _save(fig, Path(path))


def plot_samples(image_root: Path, items: list[tuple[str, str]], class_names: Sequence[str], path: str | Path,
                 per_class: int = 8, max_classes: int = 20) -> None:
    """A grid: one row per class (first `max_classes`), `per_class` training images each."""
    from PIL import Image

    from ..plots import _pyplot, _save

    plt = _pyplot()
    shown = list(class_names)[:max_classes]
    by_class: dict[str, list[str]] = defaultdict(list)
    for p, label in items:
        if label in shown and len(by_class[label]) < per_class:
            by_class[label].append(p)
    fig, axes = plt.subplots(len(shown), per_class, figsize=(per_class * 1.1, len(shown) * 1.1), squeeze=False)
    for r, label in enumerate(shown):
        for c in range(per_class):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(by_class[label]):
                with Image.open(image_root / by_class[label][c]) as img:
                    ax.imshow(img.convert("RGB"))
        axes[r][0].set_title(label, fontsize=8, loc="left")
    _save(fig, Path(path))
