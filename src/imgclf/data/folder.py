"""Scan a folder of class sub-folders (DIGITS' layout), checking every image decodes."""
from __future__ import annotations

import logging
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
        with Image.open(path) as img:
            img.load()  # full decode: catches truncated files that only a header check would pass
    except Image.DecompressionBombError:
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
