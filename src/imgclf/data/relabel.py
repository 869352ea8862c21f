"""Labels fixed after the fact: relabel/<data set>.csv, `path,label` rows the split stage applies.

`path` is an image as the split's index files name it (relative to data/<name>/images, e.g. `3/0045.png`); `label`
is the class it really shows, or `exclude` to drop the image from every split. Splits are drawn from the labels the
source gave, then the fixes applied, so a fix moves no other image between train, val and test: a model trained
after a fix is compared with the one before on the same test images (with their fixed labels).

The file is a DVC dependency of split (the relabel/ folder): adding a row reruns split and what depends on what
changed. `write_fixes` is how `imgclf relabel` and the web page's Review view add rows: merged with what is there,
written whole or not at all, one writer at a time (processes included: a lock on the relabel folder itself, so no
lock file changes the folder DVC hashes).
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import BinaryIO

from imgclf.contract import LABELS_FILE
from imgclf.errors import BadInput, shown
from imgclf.paths import DATA_NAME, SPLIT_DIR
from imgclf.targets import unmakeable_folder

EXCLUDE = "exclude"
HEADER = ["path", "label"]
MAX_RANK_DIGITS = 18  # a rank counts rows; int() of over 4,300 digits is a ValueError, not our one line
ISSUE_COLUMNS = ("rank", "path", "given_label", "suggested_label")  # of label_issues.csv's (label_issues.COLUMNS)


Opener = Callable[[Path], BinaryIO]


def read_fixes(path: Path, opener: Opener | None = None) -> dict[str, str]:
    """{image path: label or EXCLUDE}; {} when the file is absent. Refuses a malformed file in one line. Fields are
    taken as written, as `write_fixes` writes them: a space is part of a name (`a/1.png ` is another file than
    `a/1.png`, and a class ` b` no class of `b`'s), so the row read is the row written. `opener` may refuse the
    file it opens (`imgclf serve` checks where the open file lies)."""
    if not path.is_file():
        return {}
    rows = _csv_rows(path, opener)
    first = next(rows, None)
    if first is None or [c.strip() for c in first[1]] != HEADER:
        raise BadInput(f"{path}: the first line must be the header path,label")
    fixes: dict[str, str] = {}
    for line, row in rows:
        if not row:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise BadInput(f"{path} line {line}: expected path,label (a class name, or {EXCLUDE} to drop the image)")
        image, label = row
        if image in fixes and fixes[image] != label:
            raise BadInput(
                f"{path} line {line}: {shown(image)} is given two labels ({shown(fixes[image])}, {shown(label)})"
            )
        fixes[image] = label
    return fixes


def _csv_rows(path: Path, opener: Opener | None = None) -> Iterator[tuple[int, list[str]]]:
    """A CSV file's rows, each with its line number, read as they come (a file of a million fixes is never held
    whole, nor its text beside it); a UTF-8 BOM (Excel's "CSV UTF-8") is skipped; bytes that are not UTF-8, a field
    over csv's limit or a NUL are refused in one line naming the file and the line."""
    read = [0]  # lines decoded so far: where bytes that are not UTF-8 are

    def lines(f: BinaryIO) -> Iterator[str]:
        for chunk in f:  # split at \n; a lone \r (old Mac files) ends a line too, as csv reads them
            for raw in filter(None, re.split(rb"(?<=\r)(?!\n)", chunk)):
                read[0] += 1
                yield (raw.removeprefix(codecs.BOM_UTF8) if read[0] == 1 else raw).decode("utf-8")

    with opener(path) if opener is not None else path.open("rb") as f:
        reader = csv.reader(lines(f))
        try:
            for row in reader:
                if any("\0" in field for field in row):
                    raise BadInput(f"{path} line {reader.line_num}: a NUL character; a field is a path or a label")
                yield reader.line_num, row
        except UnicodeDecodeError:
            raise BadInput(f"{path} line {read[0]}: not UTF-8 text; save the file as UTF-8 (CSV UTF-8)") from None
        except csv.Error as exc:
            raise BadInput(f"{path} line {reader.line_num}: not a CSV row ({exc})") from None


def data_classes(images: Path, labels: Path | None) -> list[str]:
    """The classes a fix may name: the last split's (its labels.txt, `labels`), else the class folders the split
    would take (hidden ones and names no list can hold left out); [] when there are neither."""
    from imgclf.data.folder import class_folders
    from imgclf.data.split import read_labels

    if labels is not None and labels.is_file():
        return read_labels(labels)
    return [p.name for p in class_folders(images)] if images.is_dir() else []


def read_issues(path: Path, opener: Opener | None = None) -> list[dict[str, str]]:
    """label_issues.csv as rows of strings, best first (`imgclf relabel --accept` and the Review page read it): the
    columns either uses must be there and every rank a whole number, or one line names the column or the line.
    `opener` as for `read_fixes`."""
    from imgclf.errors import MissingInput

    if path.exists() and not path.is_file():  # a folder, a pipe, a device: not the stage's CSV
        raise BadInput(f"{shown(str(path))} is not a file: give the label_issues stage's CSV (--issues)")
    if not path.is_file():
        raise MissingInput(f"{shown(str(path))} not found: run the label_issues stage first (dvc repro label_issues)")
    rows = _csv_rows(path, opener)
    first = next(rows, None)
    header = [c.strip() for c in first[1]] if first else []
    missing = [c for c in ISSUE_COLUMNS if c not in header]
    if missing:
        raise BadInput(f"{path}: no {missing[0]} column; the label_issues stage writes {','.join(ISSUE_COLUMNS)},...")
    issues = []
    for line, row in rows:
        if not row:
            continue
        if len(row) != len(header):
            raise BadInput(f"{path} line {line}: {len(row)} fields where the header names {len(header)}")
        issue = dict(zip(header, row))
        if not (issue["rank"].isascii() and issue["rank"].isdigit()) or len(issue["rank"]) > MAX_RANK_DIGITS:
            raise BadInput(
                f"{path} line {line}: rank '{shown(issue['rank'], 20)}' is not a whole number of at most "
                f"{MAX_RANK_DIGITS} digits"
            )
        issues.append(issue)
    return issues


def check_fixes(
    path: Path, fixes: Mapping[str, str], images: Iterable[str], class_names: Iterable[str], *, rows: bool = True
) -> None:
    """Every fixed image is one of the data set's and every label one of its classes (or EXCLUDE). `rows`: the
    fixes are the file's, so an image no longer there (removed since) is refused with how to drop its row; a typo
    is never ignored."""
    known, classes = set(images), list(class_names)
    if EXCLUDE in classes and any(label == EXCLUDE for label in fixes.values()):
        raise BadInput(f"{path}: the data set has a class named '{EXCLUDE}'; rename it to drop images this way")
    for image, label in fixes.items():
        if image not in known:
            removed = f"; if the image was removed, delete its row from {path}" if rows else ""
            raise BadInput(
                f"{path}: {shown(image)} is not an image of this data set (paths as in split/train.csv){removed}"
            )
        if label not in classes and label != EXCLUDE:
            valid = shown(", ".join(classes))
            raise BadInput(f"{path}: {shown(image)} -> '{shown(label)}' is not a class; one of: {valid}, {EXCLUDE}")


def apply_fixes(
    splits: Mapping[str, list[tuple[str, str]]], fixes: Mapping[str, str]
) -> dict[str, list[tuple[str, str]]]:
    """The splits with each fixed image relabelled, or left out when excluded; membership otherwise unchanged."""
    out = {}
    for name, rows in splits.items():
        kept = [(p, fixes.get(p, label)) for p, label in rows if fixes.get(p) != EXCLUDE]
        out[name] = sorted(kept)
    return out


def write_fixes(
    path: Path,
    new: Mapping[str, str] | Callable[[dict[str, str]], Mapping[str, str]],
    check: Callable[[dict[str, str]], None] | None = None,
) -> dict[str, str]:
    """Merge `new` into the file (a later fix of an image replaces its earlier one), atomically and holding the
    folder's lock from the read to the write, so no other writer's rows are lost; returns all. `new` may be a
    function of the rows in the file, read under the lock, that gives the rows to add. `check(all)` may refuse the
    merged rows (BadInput): nothing is written. A link (fixes kept elsewhere, shared) is written through: its target
    gets the rows and the link stays, as an editor saving the file would leave it. A file no one may write is refused
    (BadInput), not replaced: a rename would replace it whatever its mode."""
    from imgclf.files import write_text

    if path.is_symlink():
        link, path = path, path.resolve()
        if not path.parent.is_dir():  # no folder is made where a link leads
            raise BadInput(f"{shown(str(link))} is a link to {shown(str(path))}, whose folder is not there: make it, "
                           "or remove the link")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent):
        # kept as it is: a file no one may write (root may, yet is refused too), or one this user may not
        if path.is_file() and (not path.stat().st_mode & 0o222 or not os.access(path, os.W_OK)):
            raise BadInput(f"{shown(str(path))} is read-only: make it writable (chmod u+w, as its owner) to add fixes")
        earlier = read_fixes(path)
        fixes = {**earlier, **(new(earlier) if callable(new) else new)}
        if check is not None:
            check(fixes)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(sorted(fixes.items()))
        write_text(path, buf.getvalue())
    return fixes


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One writer at a time: a lock on the folder itself (a lock file in relabel/ would change the folder DVC hashes
    and rerun split)."""
    from imgclf.files import lock_folder

    release = lock_folder(folder)
    try:
        yield
    finally:
        release()


def relabel_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="imgclf relabel", description=command.__doc__)
    parser.add_argument("fixes", nargs="*", metavar="PATH=LABEL", help=f"an image and its class, or {EXCLUDE}")
    parser.add_argument(
        "--accept",
        metavar="RANKS",
        help="take label_issues.csv's suggested labels for these ranks: 1-10, 3,7,12 or all",
    )
    parser.add_argument("--data", default=None, help="the data set's name, data/NAME (default: data.name in params)")
    parser.add_argument("--issues", default="reports/label_issues/label_issues.csv", help="what --accept reads")
    parser.add_argument("--relabel-dir", default="relabel", help="where <data>.csv is written (paths.relabel)")
    parser.add_argument("--images", default=None, help="the data set's images (default: data/<data>/images)")
    return parser


def ranks(text: str, last: int) -> set[int]:
    """ "1-10", "3,7,12" or "all" as a set of ranks from 1 to `last`."""
    if text == "all":
        return set(range(1, last + 1))
    chosen: set[int] = set()
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        numbers = (lo, hi) if dash else (lo,)  # "1-": a range without its end, refused
        if not all(n.isascii() and n.isdigit() for n in numbers):
            raise BadInput(f"--accept {shown(text)}: give ranks as 1-10, 3,7,12 or all")
        # more digits than `last` has is past it, and int() refuses a number of over 4,300 digits with a traceback
        lo, hi = (n.lstrip("0") or "0" for n in (lo, hi or lo))  # leading zeros count towards int()'s limit too
        first, end = (0, 0) if max(len(lo), len(hi)) > len(str(last)) else (int(lo), int(hi))
        if not 1 <= first <= end <= last:
            valid = f"a rank or a range of ranks from 1 to {last}" if last else "a rank: there are no suggestions"
            raise BadInput(f"--accept {shown(text)}: {shown(part.strip())} is not {valid}")
        chosen.update(range(first, end + 1))
    return chosen


def command(argv: list[str]) -> int:
    """Fix labels: write relabel/<data>.csv rows (merged with what is there), which the split stage applies on the
    next dvc repro; from PATH=LABEL arguments or from the label_issues stage's suggestions by rank."""
    import sys

    args = relabel_parser().parse_args(argv)
    try:
        name = _plain_name(args.data) if args.data is not None else _data_name()
        images = Path(args.images or Path("data") / name / "images")
        classes = data_classes(images, images.parent / SPLIT_DIR / LABELS_FILE)
        if not classes:
            raise BadInput(f"no class folders under {images}: run dvc repro fetch, or give --images")
        indexed = _indexed(images.parent / SPLIT_DIR)
        new, suggested = _new_fixes(args, images, indexed, classes)
        if why := unmakeable_folder(args.relabel_dir):  # [Errno 17] File exists, from the folder's mkdir
            raise BadInput(f"--relabel-dir {shown(args.relabel_dir)} {why}: give the folder relabel files go in")
        target = Path(args.relabel_dir).expanduser() / f"{name}.csv"  # the folder checked above, ~ and all
        taken = partial(_taken, images=images, indexed=set(indexed))
        check_fixes(target, new, taken(new), classes, rows=False)
        written: dict[str, str] = {}

        def keeping(earlier: dict[str, str]) -> dict[str, str]:  # the file's rows as read under its lock
            written.update(_keep_earlier(new, suggested, earlier))
            return written

        # and every row of the file as it will be, under its lock: one split would refuse is not written back
        every = write_fixes(target, keeping, check=lambda fixes: check_fixes(target, fixes, taken(fixes), classes))
    except (BadInput, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for p in sorted(set(new) - set(written)):
        print(f"kept {shown(p)}={shown(every[p])} from {shown(str(target))} (suggested: {shown(new[p])}; "
              f"{shown(p)}={shown(new[p])} changes it)")  # fmt: skip
    print(f"wrote {len(written)} fixes to {shown(str(target))} ({len(every)} in all); dvc repro applies them")
    return 0


def _new_fixes(
    args, images: Path, indexed: Mapping[str, str], classes: Iterable[str] = ()
) -> tuple[dict[str, str], set[str]]:
    """The fixes asked for (PATH=LABEL arguments, then --accept's suggestions), each image named as the split's
    index names it, and those that only --accept asked for; an image given two labels is refused, as in the file.
    Suggestions made on other labels than the split's now (a fix applied since) are refused: stale, they would undo
    a fix made after them."""
    pairs = [(*_pair(text, {*classes, EXCLUDE}), False) for text in args.fixes]
    if args.accept is not None:  # --accept "" is no rank: said so, not "nothing to fix"
        rows = read_issues(Path(args.issues))
        wanted = [r for r in rows if int(r["rank"]) in ranks(args.accept, len(rows))]
        if stale := [r for r in wanted if indexed.get(r["path"], r["given_label"]) != r["given_label"]]:
            r = stale[0]
            raise BadInput(
                f"{args.issues} is older than the split: rank {r['rank']}, {r['path']}, was labelled "
                f"{r['given_label']} there and is {indexed[r['path']]} now; dvc repro label_issues for new suggestions"
            )
        pairs += [(r["path"], r["suggested_label"], True) for r in wanted]
    if not pairs:
        raise BadInput("nothing to fix: give PATH=LABEL arguments or --accept RANKS")
    new: dict[str, str] = {}
    given: set[str] = set()
    for image, label, suggested in pairs:
        indexed_path = _indexed_path(image, images)
        if new.get(indexed_path, label) != label:
            raise BadInput(f"{shown(indexed_path)} is given two labels ({shown(new[indexed_path])}, {shown(label)}); "
                           "give it one")  # fmt: skip
        new[indexed_path] = label
        given |= set() if suggested else {indexed_path}
    return new, set(new) - given


def _keep_earlier(new: dict[str, str], suggested: set[str], earlier: Mapping[str, str]) -> dict[str, str]:
    """The fixes to write: a suggestion never replaces a fix already in the file with another label (a reviewer's,
    which the model that made the suggestion had not seen); PATH=LABEL does."""
    return {p: label for p, label in new.items() if p not in suggested or earlier.get(p, label) == label}


def _indexed_path(image: str, images: Path) -> str:
    """`image` as the split's index names it (`./a/1.png`, `a//1.png`, `b/../a/1.png`: `a/1.png`), or BadInput."""
    resolved = (images / image).resolve()
    if not resolved.is_relative_to(images.resolve()) or not resolved.is_file():
        raise BadInput(f"{shown(image)} is not an image under {shown(str(images))} (paths as in split/train.csv)")
    return resolved.relative_to(images.resolve()).as_posix()


def _indexed(split_dir: Path) -> dict[str, str]:
    """The images the last split took (its index files) and their labels; empty before the first split."""
    from imgclf.data.split import read_index

    indexes = [split_dir / f"{name}.csv" for name in ("train", "val", "test")]
    if not all(index.is_file() for index in indexes):
        return {}
    return {path: label for index in indexes for path, label in read_index(index)}


def _taken(fixes: Iterable[str], *, images: Path, indexed: set[str]) -> set[str]:
    """Those of the fixed images the next split takes: the last split's still there, and those in no index (an
    excluded image, one added since, all before the first split) that split's scan would take."""
    return {image for image in fixes if _scanned(images, image, decode=image not in indexed)}


def _scanned(images: Path, image: str, *, decode: bool = True) -> bool:
    """Whether split's scan of `images` takes `image` under that name: a file in a class folder, named as the scan
    names it (no `.` or `..` part, nothing hidden, no doubled /), that decodes (unless not `decode`: the last split
    decoded it)."""
    from imgclf.data.folder import inspect_image, usable_name

    parts = image.split("/")
    if len(parts) < 2 or not usable_name(image) or any(not part or part.startswith(".") for part in parts):
        return False
    try:
        if not (images / image).is_file():
            return False
    except (OSError, ValueError):  # a name too long, a NUL
        return False
    return not decode or inspect_image(images / image)[0] is None


def _pair(text: str, labels: set[str] = frozenset()) -> tuple[str, str]:
    """PATH=LABEL split at the `=` after which a label is named, so a class may hold one (`x=y`: 3/0.png=x=y);
    else at the last."""
    splits = [(text[:i], text[i + 1 :]) for i, c in enumerate(text) if c == "="]
    image, label = next(((i, lb) for i, lb in reversed(splits) if lb in labels), splits[-1] if splits else ("", ""))
    if not splits or not image or not label:
        raise BadInput(f"'{text}' is not PATH=LABEL (e.g. 3/0045.png=8, or 3/0045.png={EXCLUDE})")
    return image, label


def _plain_name(name: str) -> str:
    """A data set's name (data/NAME/, relabel/NAME.csv): a path there would write the fixes outside relabel/, where
    no stage reads them."""
    if DATA_NAME.fullmatch(name) is None:
        raise BadInput(f"--data {name[:80]!r} is not a data set's name: a plain name as in data/NAME/ (ASCII "
                       "letters, digits, _, - and ., not first), as data.name is")  # fmt: skip
    return name


def _data_name() -> str:
    import yaml

    params = Path("params.yaml")
    name = (yaml.safe_load(params.read_text()) or {}).get("data", {}).get("name") if params.is_file() else None
    if not name:
        raise BadInput("no params.yaml naming data.name here: give --data")
    return name
