"""What a Classify Many names: files as given, a folder's images, the lines of a .txt list. `imgclf predict` takes
them all; `imgclf serve` takes them one at a time and stops past its cap, having listed and read no further."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from imgclf.errors import BadInput, shown
from imgclf.files import open_regular

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
MAX_LINE = 4096  # bytes of a list's line: a path longer than Linux's PATH_MAX names nothing


def collect_inputs(args: Sequence[str], line_kind: Callable[[Path], str] | None = None) -> list[Path]:
    """Files as given, folders expanded (images inside, recursively, sorted), .txt files read as lists of paths.
    A list none of whose lines names a file (by `line_kind`: `imgclf serve` reads a relative line from the list's
    folder and counts no line outside its roots, so the answer tells nothing of what lies there) is refused."""
    paths: list[Path] = []
    for arg in args:
        found = iter_inputs([arg], line_kind)
        paths.extend(sorted(found) if _kind(Path(arg)) == "folder" else found)
    return paths


def iter_inputs(
    args: Sequence[str],
    line_kind: Callable[[Path], str] | None = None,
    opener: Callable[[Path], BinaryIO] = open_regular,
) -> Iterator[Path]:
    """collect_inputs' paths one at a time, as they are found: a folder's images in the order the file system lists
    them, a list's lines as they are read (`opener` opens it; serve's checks the open file)."""
    for arg in args:
        path = Path(arg)
        kind = _kind(path)
        if kind == "folder":
            yield from _images_in(path)
        elif kind == "file" and path.suffix.lower() == ".txt":
            yield from _listed(path, line_kind or _kind, opener)
        else:
            yield path  # a missing or odd file is reported per file later, not here


def _images_in(folder: Path) -> Iterator[Path]:
    """A folder's images and its subfolders', one folder listed at a time and only as far as they are taken; hidden
    names and links to folders left out, as Path.rglob leaves them (a loop of links would never end)."""
    pending = [folder]
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except PermissionError:  # as rglob: a folder it may not list holds nothing
            continue
        with entries:
            for entry in entries:
                path = Path(entry.path)
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append(path)
                elif path.suffix.lower() in IMAGE_SUFFIXES and _kind(path) == "file":
                    yield path


def _listed(path: Path, line_kind: Callable[[Path], str], opener: Callable[[Path], BinaryIO]) -> Iterator[Path]:
    """A list's non-blank lines as paths, read as they are taken. Read to its end with none naming a file, it is
    refused: notes, not a list of images."""
    count, first, named = 0, Path(), False
    try:
        with opener(path) as f:
            while chunk := f.readline(MAX_LINE + 1):
                if len(chunk) > MAX_LINE and not chunk.endswith(b"\n"):
                    raise BadInput(f"{shown(path)}: a line over {MAX_LINE} bytes; a list names one image per line")
                for line in filter(None, map(str.strip, chunk.decode("utf-8").splitlines())):
                    count, first = count + 1, first if count else Path(line)
                    named = named or line_kind(Path(line)) == "file"
                    yield Path(line)
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{shown(path)}: not a readable list of image paths ({type(exc).__name__})") from None
    if count and not named:
        raise BadInput(
            f"{shown(path)}: a .txt file is read as a list of image paths, one per line, and none of its "
            f"{count} lines names a file (line 1: {str(first)[:60]!r})"
        )


def _kind(path: Path) -> str:
    """folder, file or other (missing, a name the file system refuses, a loop of links)."""
    try:
        return "folder" if path.is_dir() else "file" if path.is_file() else "other"
    except (OSError, ValueError):
        return "other"
