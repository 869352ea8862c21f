"""Scan a folder of class sub-folders (DIGITS' layout), checking every image decodes."""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from imgclf.data.images import ImageTooLarge, open_image
from imgclf.data.parallel import parallel_map
from imgclf.errors import BadInput, MissingInput

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
        content = path.read_bytes()  # read once: hashed for the data version, then decoded from memory
    except OSError as exc:
        return f"unreadable ({type(exc).__name__})", None
    if not content:
        return "empty file", None
    try:
        with open_image(io.BytesIO(content)) as img:
            img.load()  # full decode: catches truncated files that only a header check would pass
            digest = hashlib.sha1(img.tobytes()).hexdigest()
            return None, ImageInfo(img.width, img.height, img.mode, digest, hashlib.sha256(content).hexdigest())
    except (ImageTooLarge, Image.DecompressionBombError):
        return "decompression bomb", None
    except UnidentifiedImageError:
        return "not an image", None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return f"corrupt ({type(exc).__name__})", None


def scan_image_folder(root: str | Path, workers: int | None = None) -> FolderScan:
    """List every decodable image in root/<class>/...; hidden files are ignored, bad ones recorded."""
    root = Path(root)
    if not root.is_dir():
        raise MissingInput(f"image folder {root} does not exist")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise BadInput(f"{root} has {len(class_dirs)} class sub-folder(s); a classifier needs at least 2")
    files = [
        (cls_dir, p)
        for cls_dir in class_dirs
        for p in sorted(cls_dir.rglob("*"))
        if p.is_file() and not _hidden(p, cls_dir)
    ]
    results = list(parallel_map(inspect_image, [p for _, p in files], workers, chunksize=256))
    scan = FolderScan(items=[], class_names=[d.name for d in class_dirs])
    for (cls_dir, path), (reason, info) in zip(files, results):
        rel = path.relative_to(root).as_posix()
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


def _hidden(path: Path, base: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(base).parts)


def copy_class_folders(src: str | Path, out_dir: str | Path, exclude=(), prefix: str = "") -> list[str]:
    """Copy src/<class>/... into out_dir/<class>/<prefix><file> (hidden and excluded classes left out)."""
    src, out_dir = Path(src).expanduser(), Path(out_dir)
    if not src.is_dir():
        raise MissingInput(f"data.path {src} is not a directory; point it at a folder of class sub-folders")
    copied = []
    for cls_dir in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if cls_dir.name in exclude:
            continue
        for path in sorted(p for p in cls_dir.rglob("*") if p.is_file() and not _hidden(p, cls_dir)):
            rel = f"{cls_dir.name}/{prefix}{path.relative_to(cls_dir).as_posix().replace('/', '__')}"
            (out_dir / cls_dir.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out_dir / rel)  # a copy: DVC may make its cached files read-only
            copied.append(rel)
    return copied


def fetch_folder(
    out_dir: str | Path, path: str | None, val_path: str | None = None, test_path: str | None = None, exclude=()
) -> int:
    """DIGITS' layout: one sub-folder per class; optional separate val/test folders become fixed splits."""
    from imgclf.data import TEST_LIST, VAL_LIST

    if not path:
        raise BadInput("data=folder needs data.path=/path/to/folder (one sub-folder per class)")
    total = len(copy_class_folders(path, out_dir, exclude))
    for extra, name, listing in ((val_path, "val", VAL_LIST), (test_path, "test", TEST_LIST)):
        if extra:
            rels = copy_class_folders(extra, out_dir, exclude, prefix=f"{name}__")
            (Path(out_dir) / listing).write_text("".join(f"{r}\n" for r in rels))
            total += len(rels)
    log.info("copied %d files from %s", total, path)
    return total
