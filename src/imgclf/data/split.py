"""Stratified train/val/test split, the sample subset, and the index files DVC tracks."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from imgclf.contract import LABELS_FILE, format_labels, parse_labels
from imgclf.data import SPLITS
from imgclf.errors import BadInput, MissingInput

MANIFEST = "manifest.csv"  # split/manifest.csv: path, sha256 of every indexed image


def _carve(items: list[tuple[str, str]], fraction: float, seed: int, name: str) -> tuple[list, list]:
    """Split off `fraction` of the items as split `name`, stratified by label: (rest, carved)."""
    from sklearn.model_selection import train_test_split  # imported here: sklearn adds ~1 s to every stage

    labels = [lbl for _, lbl in items]
    if not items:
        raise BadInput(f"no readable image left to carve a {name} split from: each is unreadable or in a fixed split "
                       "(data.val_path, data.test_path)")  # fmt: skip
    try:
        return train_test_split(items, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError:  # a class of one image, or fewer images carved (or left) than classes
        counts = Counter(labels)
        small = min(counts, key=counts.get)
        raise BadInput(
            f"cannot carve a {name} split stratified by class from {len(items)} images of {len(counts)} classes: "
            f"both sides need an image of every class, and the smallest class, {small!r}, has {counts[small]}; "
            "add images to the small classes or remove them (or give a larger data set)"
        ) from None


def _check_fraction(name: str, fraction: float) -> None:
    if not 0.0 < fraction < 1.0:
        raise BadInput(f"data.split.{name} must be between 0 and 1 (exclusive); got {fraction}")


def stratified_split(
    items: list[tuple[str, str]], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[tuple[str, str]]]:
    """Split (path, label) pairs into train/val/test, keeping class proportions in each."""
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise BadInput(f"data.split.val_fraction + test_fraction must be below 1; got {val_fraction + test_fraction}")
    rest, test = _carve(items, test_fraction, seed, "test")
    train, val = _carve(rest, val_fraction / (1.0 - test_fraction), seed, "val")  # val_fraction is of the whole set
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def split_with_fixed(
    items: list[tuple[str, str]], fixed: dict[str, list[str]], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[tuple[str, str]]]:
    """Keep fixed splits (an official test set, separate val/test folders); carve the missing ones from the rest.

    Here a fraction is of the images left once the fixed splits are taken out.
    """
    out: dict[str, list[tuple[str, str]]] = {}
    for name, paths in fixed.items():
        wanted = set(paths)
        out[name] = [item for item in items if item[0] in wanted]
        if not out[name]:
            raise BadInput(f"the fixed {name} list names no readable image")
    taken = {p for split in out.values() for p, _ in split}
    rest = [item for item in items if item[0] not in taken]
    for name, frac in (("test", test_fraction), ("val", val_fraction)):
        if name not in out:
            _check_fraction(f"{name}_fraction", frac)
            rest, out[name] = _carve(rest, frac, seed, name)
    out["train"] = rest
    trained = {label for _, label in rest}
    for name in ("val", "test"):  # a class the model never sees, scored on: its training images all unreadable
        if unseen := sorted({label for _, label in out[name]} - trained):
            raise BadInput(f"class {unseen[0]!r} has images in the {name} split but none readable to train on; add "
                           "readable images of it to data.path, or drop it (data.exclude)")  # fmt: skip
    return {name: sorted(out[name]) for name in SPLITS}


def sample_subset(items: list[tuple[str, str]], per_class: int, seed: int) -> list[tuple[str, str]]:
    """Pick up to `per_class` items of each class (fast.ai's sample set)."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[tuple[str, str]]] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    picked = []
    for label in sorted(by_class):
        group = by_class[label]
        idx = rng.permutation(len(group))[:per_class]
        picked.extend(group[i] for i in sorted(idx))
    return sorted(picked)


def write_index(path: Path, rows: list[tuple[str, str]]) -> None:
    """Write a (path, label) CSV index."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)


def read_index(path: str | Path) -> list[tuple[str, str]]:
    """Read a (path, label) CSV index written by write_index."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"split index {path} not found; run the split stage first (dvc repro split)")
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != ["path", "label"]:
            raise BadInput(f"{path} is not a split index: header {header}, expected ['path', 'label']")
        rows = list(reader)
    bad = next((i for i, row in enumerate(rows, start=2) if len(row) != 2), None)
    if bad is not None:
        raise BadInput(f"{path} line {bad}: expected 2 fields (path,label), got {len(rows[bad - 2])}")
    return [(row[0], row[1]) for row in rows]


def read_labels(path: str | Path) -> list[str]:
    """The split's class names (labels.txt, the serving contract's format), in index order."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"labels file {path} not found; run the split stage first (dvc repro split)")
    return parse_labels(path.read_text())


def write_split(
    out_dir: Path,
    splits: dict[str, list],
    class_names: list[str],
    sample_per_class: int,
    seed: int,
    digests: Mapping[str, str],
    *,
    fix: Callable[[dict[str, list]], dict[str, list]] | None = None,
) -> None:
    """Write index CSVs, labels.txt, the sample/ subset of every split, and manifest.csv: the sha256 of every
    indexed file's bytes, so the data version and the pack cache follow the images' content, not their names.

    `splits` are as drawn from the source's labels; `fix` (relabel/<data>.csv's fixes, applied) is applied to them
    and to their samples after the draw, so a fix moves no other image in or out of a split or a sample."""
    fix = fix or (lambda drawn: drawn)
    samples = fix({name: sample_subset(splits[name], sample_per_class, seed) for name in SPLITS})
    splits = fix(splits)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / MANIFEST).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "sha256"])
        writer.writerows(sorted((path, digests[path]) for name in SPLITS for path, _ in splits[name]))
    (out_dir / LABELS_FILE).write_text(format_labels(class_names))
    for name in SPLITS:
        write_index(out_dir / f"{name}.csv", splits[name])
        write_index(out_dir / "sample" / f"{name}.csv", samples[name])


def read_manifest(split_dir: str | Path) -> dict[str, str]:
    """{path: sha256 of the file's bytes} for every indexed image (written by the split stage)."""
    path = Path(split_dir) / MANIFEST
    if not path.is_file():
        raise MissingInput(f"{path} not found; rerun the split stage (dvc repro split)")
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != ["path", "sha256"]:
        raise BadInput(f"{path} is not a split manifest: expected the header path,sha256")
    bad = next((i for i, row in enumerate(rows[1:], start=2) if len(row) != 2), None)
    if bad is not None:
        raise BadInput(f"{path} line {bad}: expected 2 fields (path,sha256); rerun split (dvc repro split)")
    return {row[0]: row[1] for row in rows[1:]}


def data_version(split_dir: str | Path) -> str:
    """Short sha256 over the index files, labels and the manifest of content digests: the data version tagged on
    every run and part of the resume fingerprint. An image edited in place changes it."""
    split_dir = Path(split_dir)
    h = hashlib.sha256()
    for path in sorted(split_dir.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(split_dir).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]
