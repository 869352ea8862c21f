"""Scan a folder of class sub-folders (DIGITS' layout), checking every image decodes."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import shutil
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from imgclf.data.images import ImageTooLarge, open_image
from imgclf.data.parallel import parallel_map
from imgclf.errors import BadInput, MissingInput, did_you_mean, shown
from imgclf.targets import MAX_NAME

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageInfo:
    """What the report and the data version need of a readable image: size, mode, a hash of its decoded pixels
    (duplicates across splits) and a hash of the file's bytes (its content, for the data version)."""

    width: int
    height: int
    mode: str
    digest: str
    sha256: str = ""


@dataclass
class FolderScan:
    """Images found under a root: (relative path, class name) pairs plus what was skipped and why."""

    items: list[tuple[str, str]]
    class_names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    info: dict[str, ImageInfo] = field(default_factory=dict)

    def skipped_counts(self) -> dict[str, int]:
        return dict(Counter(reason for _, reason in self.skipped))


def inspect_image(path: Path) -> tuple[str | None, ImageInfo | None]:
    """Decode `path` by its content (not its extension): (None, info) if readable, else (reason, None)."""
    try:
        f = path.open("rb")
    except OSError as exc:
        return f"unreadable ({type(exc).__name__})", None
    try:
        with f:
            if not f.peek(1):
                return "empty file", None
            with open_image(f) as img:  # from the file: memory follows the pixel limit, not the file's size
                img.load()  # full decode: catches truncated files that only a header check would pass
                digest = hashlib.sha1(f"{img.mode} {img.width}x{img.height}\n".encode())  # 2x8 and 8x2 black differ
                digest.update(img.tobytes())
                digest = digest.hexdigest()
                f.seek(0)
                content = hashlib.file_digest(f, "sha256").hexdigest()  # the bytes, for the data version
                return None, ImageInfo(img.width, img.height, img.mode, digest, content)
    except (ImageTooLarge, Image.DecompressionBombError):
        return "decompression bomb", None
    except UnidentifiedImageError:
        return "not an image", None
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError) as exc:  # RuntimeError: libavif's
        return f"corrupt ({type(exc).__name__})", None


def scan_image_folder(root: str | Path, workers: int | None = None, max_classes: int | None = None) -> FolderScan:
    """List every decodable image in root/<class>/...; hidden files are ignored, bad ones recorded. More than
    `max_classes` class folders are refused before a file is read."""
    root = Path(root)
    if not root.is_dir():
        raise MissingInput(f"image folder {root} does not exist")
    class_dirs = class_folders(root)
    if len(class_dirs) < 2:
        raise BadInput(f"{root} has {len(class_dirs)} class sub-folder(s); a classifier needs at least 2")
    if max_classes is not None and len(class_dirs) > max_classes:
        raise BadInput(f"{root} has {len(class_dirs):,} class sub-folders; a classifier has 2 to {max_classes:,}")
    # (class folder, file, path relative to root, size): Path's own order, by parts (its __lt__ is slow by 100,000s)
    files = [
        (cls_dir, p, "/".join(p.parts[len(root.parts) :]), size)
        for cls_dir in class_dirs
        for p in sorted(cls_dir.rglob("*"), key=lambda p: p.parts)
        if (size := _file_size(p)) is not None
        and not any(part.startswith(".") for part in p.parts[len(root.parts) + 1 :])
    ]
    scan = FolderScan(items=[], class_names=[d.name for d in class_dirs])
    usable = []
    for entry in files:
        if usable_name(entry[2]):
            usable.append(entry)
        else:  # the report names it as it can: undecodable bytes escaped
            scan.skipped.append((entry[2].encode("utf-8", "backslashreplace").decode(), UNUSABLE_NAME))
    # an empty file is skipped without being opened, or sent to a process
    results = iter(list(parallel_map(inspect_image, [path for _, path, _, size in usable if size], workers, 256)))
    for cls_dir, _, rel, size in usable:
        reason, info = next(results) if size else ("empty file", None)
        if reason:
            scan.skipped.append((rel, reason))
        else:
            scan.items.append((rel, cls_dir.name))
            scan.info[rel] = info
    empty = sorted(set(scan.class_names) - {label for _, label in scan.items})
    if empty:
        raise BadInput(f"class folder {root / empty[0]} has no readable images; remove it or add images")
    if scan.skipped:
        log.warning("skipped %d unreadable files under %s: %s", len(scan.skipped), root, scan.skipped_counts())
    return scan


def class_folders(root: Path) -> list[Path]:
    """The class folders a scan of `root` takes, sorted: folders, not hidden, with names every list can hold."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and usable_name(p.name))


def _file_size(path: Path) -> int | None:
    """The size of a regular file (after links), or None: a folder, a broken link, a pipe or a socket."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


# what fetch leaves behind, and why: a data set is what lies under data.path, as DVC hashes it
LINKED_FOLDER = "linked folder (DVC does not hash inside it)"
LINK_OUTSIDE = "link to a file outside data.path"
LINK_LEFT_OUT = "link to a hidden file, or one outside the class folders taken"
NOT_A_FILE = "pipe, socket or device: not a file"
BROKEN_LINK = "link that leads nowhere (a missing file or a loop of links)"
UNUSABLE_NAME = "name with a control character, a line separator or bytes that are not UTF-8"
# str.splitlines() ends a line at these too, beside the C0 controls: a name holding one is two lines of labels.txt
LINE_SEPARATORS = {"\x85", "\u2028", "\u2029"}


def usable_name(name: str) -> bool:
    """A name every list of the pipeline can hold: UTF-8 (the CSVs, labels.txt) and one line (test.txt), however
    it is split: no control character (C0, DEL, C1) and no Unicode line or paragraph separator."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by Python as surrogates
        return False
    return not any(ord(c) < 32 or 127 <= ord(c) <= 159 or c in LINE_SEPARATORS for c in name)


def plain_name(name: str) -> bool:
    """One folder name that stays where it is put: usable (above), not empty, not hidden (`.`, `..`, `.x`), no `/`
    or `\\`: a class name a source reads from its data (CIFAR's batches.meta) becomes a folder of exactly this name."""
    return bool(name) and usable_name(name) and not name.startswith(".") and not {"/", "\\"} & set(name)


def class_files(src: Path, exclude, prefix: str, skipped: Counter) -> Iterator[tuple[Path, str]]:
    """(file, out path) for src/<class>/..., nested folders flattened into the name. Hidden entries and excluded
    classes are left out; linked folders (DVC's hash of data.path does not look inside them, so a change there would
    not rerun anything), links leading outside data.path or nowhere (a loop) and unusable names are skipped and
    counted in `skipped`.
    A class folder with no file to copy (empty, or hidden files only) is BadInput, as it is reached."""
    root = src.resolve()
    for cls_dir in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if cls_dir.name in exclude:
            continue
        if cls_dir.is_symlink() or not usable_name(cls_dir.name):
            skipped[LINKED_FOLDER if cls_dir.is_symlink() else UNUSABLE_NAME] += 1
            continue
        empty = True
        for here, dirs, files in os.walk(cls_dir):  # links to folders are listed, never entered
            here = Path(here)
            skipped[LINKED_FOLDER] += sum((here / d).is_symlink() and not d.startswith(".") for d in dirs)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (here / d).is_symlink())
            for path in (here / f for f in sorted(files) if not f.startswith(".")):
                inside = path.relative_to(cls_dir).as_posix()
                if not usable_name(inside):
                    skipped[UNUSABLE_NAME] += 1
                elif path.is_symlink() and (target := _link_target(path)) is None:
                    skipped[BROKEN_LINK] += 1
                elif path.is_symlink() and not target.is_relative_to(root):
                    skipped[LINK_OUTSIDE] += 1
                elif path.is_symlink() and _left_out(target.relative_to(root).parts, exclude):
                    skipped[LINK_LEFT_OUT] += 1  # ../.secrets/token, ../excluded/x.png: copied as what it names
                elif path.is_file():
                    empty = False
                    yield path, f"{cls_dir.name}/{prefix}{inside.replace('/', '__')}"
                else:
                    skipped[NOT_A_FILE] += 1
        if empty:  # fetch_folder plans every copy before the first: nothing is written
            raise BadInput(
                f"class folder {cls_dir} has no files; add images, remove it, or leave it out with "
                f"data.exclude=[{cls_dir.name}]"
            )


def _left_out(parts: tuple[str, ...], exclude) -> bool:
    """A file under data.path that fetch does not take: hidden, of an excluded class, or beside the class folders."""
    return len(parts) < 2 or parts[0] in exclude or any(part.startswith(".") for part in parts)


def _link_target(path: Path) -> Path | None:
    """Where the link `path` leads, or None when it leads nowhere: a missing file, or a loop of links (Python 3.11's
    resolve() raises RuntimeError for one, later versions OSError)."""
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None


def _check_apart(folders: dict[str, str | None]) -> None:
    """The training, val and test folders are three folders apart: one inside another, its images would be trained
    on and tested on."""
    given = {key: Path(value).expanduser().resolve() for key, value in folders.items() if value}
    for (key, one), (other_key, other) in itertools.combinations(given.items(), 2):
        if one == other or one.is_relative_to(other) or other.is_relative_to(one):
            raise BadInput(f"{key}={folders[key]} and {other_key}={folders[other_key]} overlap: the same images would "
                           "be trained and tested on; give folders apart")  # fmt: skip


def _check_exclude(src: Path, exclude) -> None:
    """A name data.exclude gives that is no class folder of data.path but close to one (a typo, which would leave its
    class in) is BadInput; one close to none (caltech101's BACKGROUND_Google, where a copy lacks it) a warning."""
    if not src.is_dir():
        return  # said in one line below
    classes = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    for name in exclude or ():
        if name in classes:
            continue
        if hint := did_you_mean(str(name), classes) or did_you_mean(str(name).lower(), [c.lower() for c in classes]):
            raise BadInput(f"data.exclude names {name!r}, which is no class folder of {src}{hint}")
        log.warning("data.exclude names %r, which is no class folder of %s: nothing left out for it", name, src)


def fetch_folder(
    out_dir: str | Path, path: str | None, val_path: str | None = None, test_path: str | None = None, exclude=()
) -> int:
    """DIGITS' layout: one sub-folder per class; optional separate val/test folders become fixed splits. Two files
    that would get one name (a/sub/x.png and a/sub__x.png) are refused before anything is copied."""
    from imgclf.data import TEST_LIST, VAL_LIST

    if not path:
        raise BadInput("data=folder needs data.path=/path/to/folder (one sub-folder per class)")
    _check_apart({"data.path": path, "data.val_path": val_path, "data.test_path": test_path})
    _check_exclude(Path(path).expanduser(), exclude)
    plan: dict[str, Path] = {}
    listings: dict[str, list[str]] = {}
    skipped: Counter = Counter()
    for folder, prefix, listing in ((path, "", None), (val_path, "val__", VAL_LIST), (test_path, "test__", TEST_LIST)):
        if not folder:
            continue
        src = Path(folder).expanduser()
        if not src.is_dir():
            raise MissingInput(f"{src} is not a directory; point it at a folder of class sub-folders")
        if listing:
            listings[listing] = []
        for file, rel in class_files(src, exclude, prefix, skipped):
            if rel in plan:
                raise BadInput(f"{plan[rel]} and {file} would both be copied to {rel}; rename one of them")
            if len(os.fsencode(rel.rsplit("/", 1)[-1])) > MAX_NAME:  # nested folders flattened into one name
                raise BadInput(f"{shown(str(file))} would be copied as a name of over {MAX_NAME} bytes (its folders "
                               "flattened into it): shorten its folders' names; nothing was copied")  # fmt: skip
            plan[rel] = file
            if listing:
                listings[listing].append(rel)
    if taken := sorted({rel.split("/")[0] for rel in plan} & set(listings)):  # val.txt: a class, and the val list
        raise BadInput(f"data.path has a class folder named {taken[0]}, the file fetch lists the held-out images in; "
                       "rename the folder")  # fmt: skip
    held_out = {rel for rels in listings.values() for rel in rels}
    trained = {rel.split("/")[0] for rel in plan if rel not in held_out}
    if len(trained) < 2:  # nothing, or one class, to learn: refused here, the last fetch's images kept
        left = f" (left out: {dict(+skipped)})" if +skipped else ""
        raise BadInput(f"data.path {path} has {len(trained)} class folder(s) with images to copy{left}; a classifier "
                       "needs at least 2: one sub-folder per class, each holding its images")  # fmt: skip
    for listing, rels in listings.items():  # a class only the val or test folder has: nothing learns it
        if unknown := sorted({rel.split("/")[0] for rel in rels} - trained):
            key = "data.val_path" if listing == VAL_LIST else "data.test_path"
            raise BadInput(f"{key} has class folders data.path lacks: {', '.join(unknown[:5])}; classes of data.path: "
                           f"{', '.join(sorted(trained)[:20])}")  # fmt: skip
    for rel, file in plan.items():
        (Path(out_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, Path(out_dir) / rel)  # a copy: DVC may make its cached files read-only
    for listing, rels in listings.items():
        (Path(out_dir) / listing).write_text("".join(f"{r}\n" for r in rels))
    if +skipped:  # the counts above zero
        log.warning("left out of %s: %s", path, dict(+skipped))
    log.info("copied %d files from %s", len(plan), path)
    return len(plan)
