"""Kaggle's dogs-vs-cats: train.zip (train/cat.N.jpg, train/dog.N.jpg) and test1.zip (unlabelled test1/N.jpg)."""

from __future__ import annotations

import logging
import re
import shutil
import zipfile
from pathlib import Path

from imgclf.data.download import extract
from imgclf.data.kaggle_client import download_competition
from imgclf.errors import BadInput, MissingInput

log = logging.getLogger(__name__)

NAME = re.compile(r"^(cat|dog)\.(\d+)\.jpe?g$", re.IGNORECASE)
HOW_TO_GET = "set data.archive=/path/dogs-vs-cats.zip, or data.archive=null to download it with Kaggle credentials"


def _find(root: Path, name: str) -> Path | None:
    found = sorted(root.rglob(name))
    return found[0] if found else None


def unpack(archive: Path, work: Path) -> tuple[Path, Path | None]:
    """Extract the competition zip (or a bare train.zip) and its inner zips; return the train and test1 dirs."""
    extract(archive, work)
    for inner in ("train.zip", "test1.zip"):
        path = _find(work, inner)
        if path is not None and zipfile.is_zipfile(path):
            extract(path, path.parent)
    train = _find(work, "train")
    if train is None or not train.is_dir():
        raise BadInput(f"{archive} holds no train/ folder (from train.zip); expected Kaggle's dogs-vs-cats layout")
    test1 = _find(work, "test1")
    return train, test1 if test1 is not None and test1.is_dir() else None


def fetch_dogs_vs_cats(
    out_dir: str | Path,
    archive: str | None,
    download_dir: str | Path,
    predict_dir: str | Path,
    competition: str = "dogs-vs-cats",
) -> int:
    """Labels from file names into out_dir/<cat|dog>/; the unlabelled test1 set goes to predict_dir.

    The archive is `archive` when given (offline machines), else downloaded with the kaggle client.
    """
    if archive:
        archive_path = Path(archive).expanduser()
        if not archive_path.is_file():
            raise MissingInput(f"data.archive={archive} does not exist; {HOW_TO_GET}")
    else:
        archive_path = download_competition(competition, download_dir)
    work = Path(download_dir) / "extracted"
    shutil.rmtree(work, ignore_errors=True)
    train, test1 = unpack(archive_path, work)
    out_dir, count, unnamed = Path(out_dir), 0, []
    for path in sorted(train.iterdir()):
        match = NAME.match(path.name)
        if not match:
            unnamed.append(path.name)
            continue
        label = match.group(1).lower()
        (out_dir / label).mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), out_dir / label / path.name)
        count += 1
    if unnamed:  # counted and named, not silently dropped
        log.warning("skipped %d files in train/ not named cat.N.jpg or dog.N.jpg: %s", len(unnamed), unnamed[:10])
    if test1 is not None:
        predict_dir = Path(predict_dir)
        shutil.rmtree(predict_dir, ignore_errors=True)
        shutil.move(str(test1), predict_dir)
        log.info("unlabelled test1 set: %d images in %s", sum(1 for _ in predict_dir.iterdir()), predict_dir)
    shutil.rmtree(work, ignore_errors=True)
    return count
