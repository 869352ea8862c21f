"""Where a command may write, checked before it does: a file only where a file of its own or one it may replace is,
never over a folder, a pipe or a device, nor over what the command reads; a folder only where one can be made; an
SQLite store only in a database of its own kind. And the empty folders a failed command made on the way, taken
back."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from imgclf.errors import BadInput

log = logging.getLogger(__name__)

MAX_NAME = 255 - 25  # the file system's 255 bytes, less the temporary twin's `.` and `.tmp<pid>@<machine>`


def unmakeable_folder(path: str | Path) -> str | None:
    """Why `path` cannot be a folder a command writes into, as the words after its name (a file; under a file; a
    pseudo filesystem such as /proc, or no write access; a name longer than a file system takes; blank), or None: it
    is one, or it can be made. Nothing is made here."""
    if not str(path).strip():
        return "is blank"
    if "\x00" in str(path):  # no file name holds one: pathlib says it exists nowhere, os.stat raises ValueError
        return "holds a NUL byte, which no file name can"
    target = Path(os.path.expanduser(path)).absolute()
    if target.is_symlink() and not target.exists():
        return "is a link that leads nowhere (or to itself)"
    if target.exists() and not target.is_dir():
        return "is a file, not a folder"
    existing = next(p for p in (target, *target.parents) if p.exists() or p.is_symlink())
    if existing.is_symlink() and not existing.exists():  # mkdir would say "File exists", or "Too many levels"
        return f"cannot be made: {existing} is a link that leads nowhere (or to itself)"
    if not existing.is_dir():
        return f"cannot be made: {existing} is a file"
    pseudo = existing.parts[:2] in (("/", "proc"), ("/", "sys"))  # the kernel's: writable to root, never a file
    if pseudo or not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be written: {existing} takes no files"
    missing = [p.name for p in (target, *target.parents) if p != existing and existing in p.parents]
    if any(len(os.fsencode(name)) > 255 for name in missing):
        return "cannot be made: a name in it is longer than 255 bytes"
    return None


def remove_empty(folders: Iterable[Path]) -> None:
    """Remove each of `folders` that is an empty folder (not a link), deepest first: what a failed command made on the
    way to its outputs. One holding anything stays, and with it those above; a folder that cannot be removed is
    logged (the command's own error is the one to show)."""
    for folder in sorted(set(folders), key=lambda p: len(p.absolute().parts), reverse=True):
        try:
            if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
                folder.rmdir()
        except OSError as exc:
            log.warning("could not remove %s: %s", folder, exc)


def refuse_to_replace(path: str | Path, flag: str, force: bool = False) -> None:
    """BadInput when `path` cannot be a file this command writes (refuse_folder), or is a file already there and
    `force` was not given: a command replaces only what the user has said it may."""
    refuse_folder(path)
    path = Path(path)
    try:
        taken = path.exists() or path.is_symlink()
    except OSError:  # a name too long to look up: the write itself says so, in one line
        taken = False
    if taken and not force:
        raise BadInput(f"{flag} {path} is already there; give another name, or add --force to replace it")


def refuse_reading(path: str | Path, flag: str, files: Iterable, folders: Iterable = ()) -> None:
    """BadInput when `path` is (after links) one of the `files` the command reads, or lies in one of the `folders`
    it reads (a model's): --force replaces an earlier output, never the command's own input."""
    target = _resolved(path)
    for source in filter(None, map(_resolved, files)):
        if target == source:
            raise BadInput(f"{flag} {path} is {source}, which this command reads; give another name; nothing was "
                           "written")  # fmt: skip
    for folder in filter(None, map(_resolved, folders)):
        if target is not None and target.is_relative_to(folder):
            raise BadInput(f"{flag} {path} is in {folder}, which this command reads; give another name; nothing was "
                           "written")  # fmt: skip


def _resolved(path: str | Path) -> Path | None:
    """`path` after links, or None for a name no file can have (a NUL, a loop of links): it reads nothing."""
    try:
        return Path(path).resolve()
    except (OSError, ValueError, RuntimeError):
        return None


def refuse_folder(path: str | Path) -> None:
    """BadInput when `path` cannot be a file this command writes: an existing folder (or a link to one), a pipe,
    socket or device (or a link to one), a name with a NUL, an empty name or one too long for its temporary twin."""
    path = Path(path)
    if "\0" in str(path) or not path.name:
        raise BadInput(f"{str(path)!r} is not a file name; nothing was written")
    if len(os.fsencode(path.name)) > MAX_NAME:
        raise BadInput(f"{path.name[:40]}...: file name too long (at most {MAX_NAME} bytes); nothing was written")
    try:
        folder = path.is_dir()
    except OSError:  # a name too long to look up: the write itself says so, in one line
        folder = False
    if folder:
        raise BadInput(f"{path} is a folder; give a file name (for example {path / 'out.csv'}); nothing was written")
    special = _special(path)
    if special:  # /dev/null, a pipe, a socket, or a link to one (/dev/stdout): replaced, it would be a plain file
        raise BadInput(f"{path} is {special}, not a file; only a file is replaced (--force included): give a file "
                       "name; nothing was written")  # fmt: skip


SPECIAL = (
    (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")
)  # fmt: skip


def _special(path: Path) -> str | None:
    """What `path` (or the file a link there leads to) is when it is a pipe, a socket or a device; else None."""
    for look in (os.lstat, os.stat):
        try:
            mode = look(path).st_mode
        except (OSError, ValueError):  # absent, a dangling link, a name too long: nothing special to keep
            return None
        for test, kind in SPECIAL:
            if test(mode):
                return kind
    return None


def unreadable_file(path: str | Path) -> str | None:
    """Why `path` cannot be a file a command reads whole (a checkpoint, weights), as the words after its name, or
    None. A pipe or a device blocks or never ends (/dev/zero); a file of the kernel's (/proc/self/mem) says 0 bytes
    and fails its reads: both were a traceback from torch.load, or a read that never ended."""
    target = Path(os.path.expanduser(path))
    try:
        mode, size = (info := target.stat()).st_mode, info.st_size
    except FileNotFoundError:
        return "does not exist"
    except (OSError, ValueError) as exc:  # a NUL in the name, a loop of links, a name too long
        return f"cannot be looked up ({getattr(exc, 'strerror', None) or exc})"
    if stat.S_ISDIR(mode):
        return "is a folder"
    if kind := next((kind for test, kind in SPECIAL if test(mode)), None):
        return f"is {kind}, not a file"
    if (_resolved(target) or target).parts[:2] in (("/", "proc"), ("/", "sys")):
        return "is a file of the kernel's (/proc, /sys), not one on disk"
    if size == 0:
        return "is empty (0 bytes)"
    return None if os.access(target, os.R_OK) else "cannot be read (no permission)"


SQLITE_MAGIC = b"SQLite format 3\x00"
READONLY_NEEDS_RECOVERY = {776, 264}  # SQLITE_READONLY_ROLLBACK, SQLITE_READONLY_RECOVERY


def sqlite_tables(path: str | Path) -> set[str]:
    """The names of the tables in the SQLite database at `path`, read without changing it (but for a transaction a
    killed process left unfinished, rolled back as SQLite does on any open). BadInput names the file when it cannot
    be read, is no SQLite database, or SQLite cannot read it: MLflow and Optuna would add their tables to any
    database they are pointed at, so a store is checked before either opens it."""
    import sqlite3

    try:
        with open(path, "rb") as f:
            magic = f.read(16)
    except OSError as exc:
        raise BadInput(f"{path}: {exc.strerror or exc}") from None
    if magic != SQLITE_MAGIC:
        raise BadInput(f"{path} is not an SQLite database")
    query = "SELECT name FROM sqlite_master WHERE type = 'table'"
    try:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
                return {row[0] for row in con.execute(query)}
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) not in READONLY_NEEDS_RECOVERY:
                raise
        # A process killed inside a transaction left a hot journal (or an unrecovered WAL): a read-only connection
        # may not roll it back, so read once read-write and let SQLite restore the last commit, as any writer would
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as con:
            return {row[0] for row in con.execute(query)}
    except sqlite3.DatabaseError as exc:
        raise BadInput(f"{path} is not a readable SQLite database ({exc})") from None
