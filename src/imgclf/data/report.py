"""The split stage's data report (DIGITS' "Explore the db"): counts, sizes, samples, skipped files, leakage."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from imgclf.data import SPLITS
from imgclf.data.folder import FolderScan, ImageInfo
from imgclf.errors import MissingInput


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
    return {
        "width": summary(widths),
        "height": summary(heights),
        "modes": dict(Counter(i.mode for i in info.values()).most_common()),
    }


def cross_split_duplicates(splits: Mapping[str, list[tuple[str, str]]], info: Mapping[str, ImageInfo]) -> list[dict]:
    """Groups of pixel-identical images found in more than one split: leakage between train and test."""
    by_digest: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for split in SPLITS:
        for path, _ in splits[split]:
            by_digest[info[path].digest].append((split, path))
    return [
        {"digest": d, "images": [{"split": s, "path": p} for s, p in members]}
        for d, members in sorted(by_digest.items())
        if len({s for s, _ in members}) > 1
    ]


def conflicting_labels(splits: Mapping[str, list[tuple[str, str]]], info: Mapping[str, ImageInfo]) -> list[dict]:
    """Groups of pixel-identical images filed under more than one class, in any split: one picture taught as two
    things (a copy misfiled, or a class that is another's under a second name)."""
    by_digest: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for split in SPLITS:
        for path, label in splits[split]:
            by_digest[info[path].digest].append((split, path, label))
    return [
        {"digest": d, "images": [{"split": s, "path": p, "label": label} for s, p, label in members]}
        for d, members in sorted(by_digest.items())
        if len({label for _, _, label in members}) > 1
    ]


def lookalike_classes(class_names: Sequence[str]) -> list[list[str]]:
    """Class names that differ only by case or by Unicode form (é as one character or as e and an accent): one
    folder on a file system that folds them (macOS, Windows), and two classes nobody can tell apart in a list."""
    import unicodedata

    groups: dict[str, list[str]] = defaultdict(list)
    for name in class_names:
        groups[unicodedata.normalize("NFC", name).casefold()].append(name)
    return [names for names in groups.values() if len(names) > 1]


GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
SYMBOL_MAX_SIDE = 32  # px: MNIST's 28, CIFAR's 32 are photos in colour, digits and letters in gray


def looks_like_symbols(report: Mapping) -> bool:
    """The split's images are grayscale, or at most SYMBOL_MAX_SIDE px a side: digits, letters, icons, for which
    a mirror shows another symbol (augment=auto then picks `digits`). From report.json's image_size."""
    size = report.get("image_size") or {}
    modes = set(size.get("modes") or {})
    gray = bool(modes) and modes <= GRAY_MODES
    sides = [(size.get(axis) or {}).get("max") for axis in ("width", "height")]
    tiny = all(isinstance(side, (int, float)) for side in sides) and max(sides) <= SYMBOL_MAX_SIDE
    return gray or tiny


def auto_preset(split_dir: Path) -> str:
    """augment=auto's choice for a split: `digits` when its report.json says symbols, else `photos`."""
    report = split_dir / "report.json"
    if not report.is_file():
        raise MissingInput(f"augment=auto reads {report}, which is not there; run the split stage (dvc repro split)")
    return "digits" if looks_like_symbols(json.loads(report.read_text())) else "photos"


def write_data_report(
    out_dir: Path, image_root: Path, scan: FolderScan, splits: Mapping[str, list[tuple[str, str]]], report: dict
) -> None:
    """reports/split/: report.json, class_counts.csv and .png, samples.png (what `dvc plots` shows, MLflow logs)."""
    from imgclf.data.images import thumbnail
    from imgclf.files import atomic_path, write_json
    from imgclf.plots import plot_class_counts, plot_samples

    rows = class_counts(splits, scan.class_names)
    write_json(out_dir / "report.json", report)
    with atomic_path(out_dir / "class_counts.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["class", "split", "images"])
        writer.writeheader()
        writer.writerows(rows)
    plot_class_counts(rows, out_dir / "class_counts.png")
    plot_samples(image_root, splits["train"], scan.class_names, out_dir / "samples.png", thumbnail)


def small_classes(splits: Mapping[str, list[tuple[str, str]]], class_names: Sequence[str], minimum: int) -> list:
    """Classes with fewer than `minimum` training images, fewest first: candidates for data.balance or more data."""
    counts = Counter(label for _, label in splits["train"])
    rows = [{"class": c, "train_images": counts.get(c, 0)} for c in class_names if counts.get(c, 0) < minimum]
    return sorted(rows, key=lambda r: (r["train_images"], r["class"]))


def build_report(scan: FolderScan, splits: Mapping[str, list[tuple[str, str]]], min_class_images: int = 20) -> dict:
    dups, conflicts = cross_split_duplicates(splits, scan.info), conflicting_labels(splits, scan.info)
    return {
        "small_classes": {
            "min_class_images": min_class_images,
            "classes": small_classes(splits, scan.class_names, min_class_images),
        },
        "class_names": scan.class_names,
        "images_per_split": {s: len(splits[s]) for s in SPLITS},
        "images_per_class": {s: dict(sorted(Counter(lbl for _, lbl in splits[s]).items())) for s in SPLITS},
        "image_size": size_stats(scan.info),
        "skipped": {"counts": scan.skipped_counts(), "files": [{"path": p, "reason": r} for p, r in scan.skipped]},
        "cross_split_duplicates": {"groups": len(dups), "examples": dups[:50]},
        "conflicting_labels": {"groups": len(conflicts), "examples": conflicts[:50]},
        "lookalike_classes": {"groups": len(alike := lookalike_classes(scan.class_names)), "examples": alike[:50]},
    }
