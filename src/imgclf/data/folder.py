"""Scan a folder of class sub-folders (DIGITS' layout), checking every image decodes."""
from __future__ import annotations

import logging
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)


@dataclass
class FolderScan:
    """Images found under a root: (relative path, class name) pairs plus what was skipped and why."""

    items: list[tuple[str, str]]
    class_names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def skipped_counts(self) -> dict[str, int]:
        return dict(Counter(reason for _, reason in self.skipped))


def check_image(path: Path) -> str | None:
    """Return None if `path` decodes as an image (by content, not extension), else the reason."""
    if path.stat().st_size == 0:
        return "empty file"
    try:
        with warnings.catch_warnings():
            # past Image.MAX_IMAGE_PIXELS PIL only warns (it errors at twice that): refuse at the limit
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # full decode: catches truncated files that only a header check would pass
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "decompression bomb"
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"corrupt ({type(exc).__name__})"
    return None


def scan_image_folder(root: str | Path) -> FolderScan:
    """List every decodable image in root/<class>/...; hidden files are ignored, bad ones recorded."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise ValueError(f"{root} has {len(class_dirs)} class sub-folder(s); a classifier needs at least 2")
    items, skipped = [], []
    for cls_dir in class_dirs:
        files = sorted(p for p in cls_dir.rglob("*") if p.is_file() and not _hidden(p, cls_dir))
        good = 0
        for path in files:
            rel = path.relative_to(root).as_posix()
            reason = check_image(path)
            if reason:
                skipped.append((rel, reason))
            else:
                items.append((rel, cls_dir.name))
                good += 1
        if good == 0:
            raise ValueError(f"class folder {cls_dir} has no readable images; remove it or add images")
    if skipped:
        log.warning("skipped %d unreadable files under %s: %s", len(skipped), root, dict(Counter(r for _, r in skipped)))
    return FolderScan(items=items, class_names=[d.name for d in class_dirs], skipped=skipped)


def _hidden(path: Path, base: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(base).parts)


def copy_class_folders(src: str | Path, out_dir: str | Path, exclude=(), prefix: str = "") -> list[str]:
    """Copy src/<class>/... into out_dir/<class>/<prefix><file> (hidden and excluded classes left out)."""
    src, out_dir = Path(src), Path(out_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"data.path {src} is not a directory; point it at a folder of class sub-folders")
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


def fetch_folder(out_dir: str | Path, path: str | None, val_path: str | None = None, test_path: str | None = None,
                 exclude=()) -> int:
    """DIGITS' layout: one sub-folder per class; optional separate val/test folders become fixed splits."""
    from . import TEST_LIST, VAL_LIST

    if not path:
        raise ValueError("data=folder needs data.path=/path/to/folder (one sub-folder per class)")
    total = len(copy_class_folders(path, out_dir, exclude))
    for extra, name, listing in ((val_path, "val", VAL_LIST), (test_path, "test", TEST_LIST)):
        if extra:
            rels = copy_class_folders(extra, out_dir, exclude, prefix=f"{name}__")
            (Path(out_dir) / listing).write_text("".join(f"{r}\n" for r in rels))
            total += len(rels)
    log.info("copied %d files from %s", total, path)
    return total
