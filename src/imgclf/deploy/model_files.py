"""The files a model load reads, each read once. A file (the model, OpenVINO's weights beside it, labels.txt,
preprocessing.json) is opened through one route: a regular file, never a pipe or a device (either would block the
runtime's read for ever), and under the roots, checked on the open file, when the page asked for the model. Its
bytes are copied from that open file into a private folder, and the runtimes and the contract read only the copies:
a file swapped for a link between a check and a runtime's own open, by name, never reaches them. A small file
(optimise's gate.json, run.json) is read from its open file, up to its cap."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import BinaryIO

from imgclf.contract import RUN_FILE
from imgclf.errors import BadInput, DiskFull
from imgclf.files import NotARegularFile, open_regular

MAX_SMALL_BYTES = 64 << 10  # gate.json, run.json: optimise and export write a few hundred bytes
CHUNK = 1 << 20


class ModelFiles:
    """What one load reads from `folder` (the model's own), copied into `private` (a new folder of the load's own).
    `roots`: the page asked for the model; each file must lie under them, links followed, on the open file."""

    def __init__(self, folder: Path, private: Path, roots: list[Path] | None):
        self.folder, self.private, self.roots = folder, private, roots
        self.sealed = _sealed(folder, roots)

    def copy(self, path: Path, limit: int | None = None) -> Path:
        """The private copy of `path` (same name), from its open file; with `limit`, its first `limit` bytes only."""
        target = self.private / path.name
        with open_member(path, self.roots) as source:
            size = os.fstat(source.fileno()).st_size
            free = shutil.disk_usage(self.private).free
            if min(size, limit or size) > free:  # a sparse file can claim any size, and would fill the disk
                raise DiskFull(f"{path} is {size / 1e9:.1f} GB, more than the {free / 1e9:.1f} GB free in the "
                               "temporary folder it is loaded from")  # fmt: skip
            try:
                with open(target, "xb") as out:
                    digest = _copy(source, out, limit)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise
                raise DiskFull(f"could not copy {path} into the temporary folder it is loaded from: "
                               f"{os.strerror(exc.errno)}") from None  # fmt: skip
        if (
            os.path.abspath(path.parent) == os.path.abspath(self.folder)
            and self.sealed.get(path.name, digest) != digest
        ):
            raise BadInput(f"{path} is not the file export wrote there (its sha256 is not the one {RUN_FILE} "
                           "records): edited or replaced since; export again (dvc repro export)")  # fmt: skip
        return target

    def read(self, path: Path, limit: int = MAX_SMALL_BYTES) -> bytes:
        return read_small(path, self.roots, limit)

    def named(self, text: str) -> str:
        """A message about the private copies as the user's files: the model's folder named, not the copy's."""
        return text.replace(str(self.private), str(self.folder))


def open_member(path: Path, roots: list[Path] | None) -> BinaryIO:
    """`path` opened for reading: a regular file (under `roots`, on the open file, when given), else one line."""
    from imgclf.deploy.access import inside, open_inside  # the web app's module: predict needs none of it

    try:
        return open_regular(path) if roots is None else open_inside(path, roots)
    except FileNotFoundError:
        if roots is not None:
            inside(path, roots)  # a link out to nothing is outside, as one out to a file is
        raise
    except NotARegularFile:
        raise BadInput(f"{path}: not a regular file (a pipe or a device); a model is read from the files export "
                       "writes") from None  # fmt: skip
    except IsADirectoryError:
        raise BadInput(f"{path}: a folder where a file of the model was expected") from None


def read_small(path: Path, roots: list[Path] | None, limit: int = MAX_SMALL_BYTES) -> bytes:
    """A small file's bytes (gate.json, run.json), from its open file; BadInput past `limit`."""
    with open_member(path, roots) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BadInput(f"{path}: more than {limit >> 10} KB, no file imgclf writes there; it is not read")
    return data


def _sealed(folder: Path, roots: list[Path] | None) -> dict[str, str]:
    """The sha256 of each file that run.json in `folder` records (contract.seal), or none: no run.json, one of an
    export made before it recorded them, or one that is no record."""
    import json

    try:
        files = json.loads(read_small(folder / RUN_FILE, roots)).get("files")
    except (OSError, ValueError, AttributeError, RecursionError, BadInput):
        return {}
    if not isinstance(files, dict):
        return {}
    return {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, str)}


def _copy(source: BinaryIO, out: BinaryIO, limit: int | None) -> str:
    """Copy up to `limit` bytes; returns their sha256."""
    import hashlib

    left, digest = limit, hashlib.sha256()
    while left is None or left > 0:
        chunk = source.read(CHUNK if left is None else min(CHUNK, left))
        if not chunk:
            break
        out.write(chunk)
        digest.update(chunk)
        left = None if left is None else left - len(chunk)
    return digest.hexdigest()
