"""Kaggle's dogs-vs-cats: train.zip (train/cat.N.jpg, train/dog.N.jpg) and test1.zip (unlabelled test1/N.jpg)."""

from __future__ import annotations

import logging
import re
import shutil
import zipfile
from pathlib import Path

from imgclf.data.download import extract
from imgclf.data.folder import usable_name
from imgclf.data.kaggle_client import download_competition
from imgclf.errors import BadInput, MissingInput
from imgclf.files import atomic_dir, scratch_dir

log = logging.getLogger(__name__)

# matched whole (fullmatch: `$` would let a trailing newline through) and ASCII (`\d` would take any script's digits)
NAME = re.compile(r"(cat|dog)\.([0-9]+)\.jpe?g", re.IGNORECASE | re.ASCII)
HOW_TO_GET = "set data.archive=/path/dogs-vs-cats.zip, or data.archive=null to download it with Kaggle credentials"
PREDICT_MARK = ".imgclf-fetch"  # left in predict_dir: the folder is fetch's own output, which the next fetch replaces


MAC_METADATA = "__MACOSX"  # a zip made on macOS keeps resource forks there (__MACOSX/train/._cat.0.jpg), never data


def _find(root: Path, name: str, folder: bool, archive: Path) -> Path | None:
    """The one `name` under root, a folder or a file as asked, outside __MACOSX; two or more (a train/ inside
    train/, a second copy elsewhere) are BadInput: which one holds the data set is the zip's maker's to say."""
    found = sorted(
        p for p in root.rglob(name) if MAC_METADATA not in p.relative_to(root).parts and p.is_dir() == folder
    )
    if len(found) > 1:
        where = ", ".join(f"{p.relative_to(root).as_posix()}{'/' if folder else ''}" for p in found[:3])
        raise BadInput(
            f"{archive}: holds {len(found)} {name}{'/' if folder else ''} ({where}); expected one, as Kaggle's "
            f"dogs-vs-cats has it (train/cat.N.jpg, test1/N.jpg): remake the zip with one"
        )
    return found[0] if found else None


def _extract_inner(path: Path, work: Path, archive: Path) -> None:
    """Unpack an inner train.zip (test1.zip) beside itself. One that is not a zip is BadInput, and so is one beside a
    train/ (test1/) the outer zip holds already: unpacked, the two would merge, the inner images replacing the
    outer ones of the same name, and which of them is the data set is the zip maker's to say."""
    where = path.relative_to(work).as_posix()
    folder = _find(work, path.stem, True, archive)
    if folder is not None:
        raise BadInput(
            f"{archive}: holds both {folder.relative_to(work).as_posix()}/ and {where}; expected one, as Kaggle's "
            f"dogs-vs-cats has it ({path.name} holding {path.stem}/): remake the zip with one"
        )
    if not zipfile.is_zipfile(path):
        raise BadInput(f"{archive}: its {where} is not a readable zip; expected Kaggle's {path.name}, a zip of images")
    try:
        extract(path, path.parent)
    except BadInput as exc:  # named as the scratch folder holds it, which is gone by the time the user reads this
        raise BadInput(f"{archive}: {str(exc).replace(str(path), where)}") from None


def unpack(archive: Path, work: Path) -> tuple[Path, Path | None]:
    """Extract the competition zip (or a bare train.zip) and its inner zips; return the train and test1 dirs."""
    extract(archive, work)
    for inner in ("train.zip", "test1.zip"):
        path = _find(work, inner, False, archive)
        if path is not None:
            _extract_inner(path, work, archive)
    train = _find(work, "train", True, archive)
    if train is None:
        raise BadInput(f"{archive} holds no train/ folder (from train.zip); expected Kaggle's dogs-vs-cats layout")
    return train, _find(work, "test1", True, archive)


def _skipped(path: Path) -> str | None:
    """Why an entry of train/ or test1/ is not an image to take, or None: a folder (one named cat.99.jpg too) or a
    name with a control character or a line separator (a newline would split the split's line-based lists)."""
    if not usable_name(path.name):
        return "a control character in the name"
    if path.is_symlink() or not path.is_file():
        return "not a file"
    return None


def _warn_skipped(folder: str, skipped: dict[str, list[str]]) -> None:
    """One warning counting and naming what was left out of `folder`, by reason: never dropped silently."""
    if skipped:
        said = "; ".join(f"{len(names)} {why}: {', '.join(map(repr, names[:5]))}" for why, names in skipped.items())
        log.warning("skipped %d entries of %s: %s", sum(map(len, skipped.values())), folder, said)


def check_predict_dir(predict_dir: Path) -> None:
    """BadInput unless fetch may write predict_dir: not there, an empty folder, or a previous fetch's output (it
    holds PREDICT_MARK). A folder holding anything else is the user's: refused before anything is written."""
    if not (predict_dir.exists() or predict_dir.is_symlink()):
        return
    if not predict_dir.is_dir():
        raise BadInput(f"data.fetch.predict_dir={predict_dir} is not a folder; give a folder for the test1 images")
    held = sorted(p.name for p in predict_dir.iterdir())
    if held and PREDICT_MARK not in held:
        raise BadInput(
            f"data.fetch.predict_dir={predict_dir} holds files fetch did not write ({', '.join(held[:3])}); fetch "
            "replaces only an empty folder or its own earlier output: move them away or give another folder"
        )


def write_predict(test1: Path | None, predict_dir: Path) -> None:
    """The test1 images become predict_dir, replacing an earlier fetch's (whole or not at all); with no test1 in the
    archive, an earlier fetch's predict_dir is removed (it came from another archive), anything else left alone."""
    if test1 is None:
        if (predict_dir / PREDICT_MARK).is_file():
            log.info("the archive has no test1/: removing %s, an earlier fetch's", predict_dir)
            predict_dir.unlink() if predict_dir.is_symlink() else shutil.rmtree(predict_dir)
        return
    skipped: dict[str, list[str]] = {}
    with atomic_dir(predict_dir) as tmp:
        for path in sorted(test1.iterdir()):
            why = _skipped(path)
            if why:
                skipped.setdefault(why, []).append(path.name)
            else:
                shutil.move(str(path), tmp / path.name)
        (tmp / PREDICT_MARK).write_text("written by imgclf fetch (data=dogs_vs_cats); the next fetch replaces it\n")
    _warn_skipped("test1/", skipped)
    log.info("unlabelled test1 set: %d images in %s", sum(1 for _ in predict_dir.iterdir()) - 1, predict_dir)


def move_labelled(train: Path, out_dir: Path, archive: Path) -> int:
    """Each cat.N.jpg / dog.N.jpg of train/ into out_dir/<cat|dog>/; returns how many. Fewer than two classes
    (no cats, no dogs, or nothing named as Kaggle names them) is BadInput, before anything is moved."""
    labelled, skipped = [], {}
    for path in sorted(train.iterdir()):
        why = _skipped(path)
        match = None if why else NAME.fullmatch(path.name)
        if match:
            labelled.append((path, match.group(1).lower()))
        else:
            skipped.setdefault(why or "not named cat.N.jpg or dog.N.jpg", []).append(path.name)
    _warn_skipped("train/", skipped)  # counted and named, not silently dropped
    found = sorted({label for _, label in labelled})
    if len(found) < 2:
        raise BadInput(
            f"{archive}: train/ holds {len(labelled)} images named cat.N.jpg or dog.N.jpg "
            f"({', '.join(found) or 'neither'}); a classifier needs both cats and dogs"
        )
    for path, label in labelled:
        (out_dir / label).mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), out_dir / label / path.name)
    return len(labelled)


def fetch_dogs_vs_cats(
    out_dir: str | Path,
    archive: str | None,
    download_dir: str | Path,
    predict_dir: str | Path,
    competition: str = "dogs-vs-cats",
) -> int:
    """Labels from file names into out_dir/<cat|dog>/; the unlabelled test1 set goes to predict_dir.

    The archive is `archive` when given (offline machines), else downloaded with the kaggle client. It is unpacked
    into a new scratch folder in download_dir, removed afterwards, whether the fetch succeeded or not.
    """
    predict_dir = Path(predict_dir)
    check_predict_dir(predict_dir)
    if archive:
        archive_path = Path(archive).expanduser()
        if not archive_path.is_file():
            raise MissingInput(f"data.archive={archive} does not exist; {HOW_TO_GET}")
    else:
        archive_path = download_competition(competition, download_dir)
    with scratch_dir(Path(download_dir) / "extracted") as work:
        train, test1 = unpack(archive_path, work)
        count = move_labelled(train, Path(out_dir), archive_path)
        write_predict(test1, predict_dir)
    return count
