"""Files written whole or not at all (a file replaces only a file, a folder only a folder, fsynced), temporary
twins of killed writers removed, and weights-only reads."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from imgclf.errors import BadInput, DiskFull, first_line
from imgclf.targets import refuse_folder

log = logging.getLogger(__name__)


# this machine in a temporary twin's name: 8 hex digits of its host name's hash, so a twin is as long everywhere
MACHINE = hashlib.blake2s(socket.gethostname().encode(), digest_size=4).hexdigest()


def twin(path: Path, marker: str = ".tmp") -> Path:
    """`.<name><marker><pid>@<machine>`: where this process writes before a rename puts it at `path`. The machine
    keeps the writers of a folder shared between machines (a cluster's NFS) apart: another machine's process id
    means nothing here, and may even be this process's."""
    return path.with_name(f".{path.name}{marker}{os.getpid()}@{MACHINE}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of the file `path`; on success it is fsynced and renamed over `path` (then the
    folder is fsynced), so a crash or a power cut leaves the old file or the new one, never half of either.

    Only a file is ever replaced: an existing folder at `path` is refused (BadInput), before anything is written.
    """
    path = Path(path)
    refuse_folder(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = twin(path)
    _remove(tmp)
    remove_orphans(path)
    try:
        with disk_errors(path):
            yield tmp
            _fsync_tree(tmp)
        refuse_folder(path)  # made a folder while we wrote: still not ours to replace
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        _remove(tmp)


def lock_folder(folder: Path, *, wait: bool = True) -> Callable[[], None]:
    """An exclusive lock on the folder itself, between processes and threads alike (flock on an open file
    description), released however the process ends: no lock file beside what the folder holds (a DVC dependency's
    hash, a run's checkpoints). Returns the release; without `wait`, BlockingIOError while another holds it."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BaseException:
        os.close(fd)
        raise
    return lambda: os.close(fd)  # closing the description releases the lock


class NotARegularFile(IsADirectoryError):
    """A pipe, a socket or a device where a file was to be read: opened as a file, it would block or never end."""


def open_regular(path: Path, check: Callable[[int], None] | None = None) -> BinaryIO:
    """Open a regular file for reading (links followed), never waiting: a folder is IsADirectoryError, a pipe or a
    device NotARegularFile. `check(fd)` may refuse the open file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if check is not None:
            check(fd)
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(f"{path} is a folder")
        if not stat.S_ISREG(mode):
            raise NotARegularFile(f"{path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _new_twin(path: Path) -> Path:
    """A new, empty twin folder (`.<name>.tmp<pid>@<machine>`) beside the folder `path` (a file at `path` is
    refused), after the twins of killed writers are removed: where atomic_dir and atomic_files write before anything
    reaches `path`."""
    if path.exists() and not path.is_dir():
        raise BadInput(f"{path} is a file, not a folder; move it away or choose another path; nothing was written")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = twin(path)
    _remove(tmp)
    remove_orphans(path, folders=True)
    tmp.mkdir()
    return tmp


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a new, empty temporary folder beside `path`; on success its files are fsynced and it takes the place
    of the folder `path` (the outputs a stage declares: the old folder goes only once the new one is in place).

    An existing file at `path` is refused (BadInput): a folder replaces only a folder.
    """
    path = Path(path)
    old = twin(path, ".old")
    _remove(old)
    remove_orphans(path, ".old", folders=True)
    tmp = _new_twin(path)
    try:
        with disk_errors(path):
            yield tmp
            _fsync_tree(tmp)
        if path.is_symlink() or path.exists():
            os.replace(path, old)  # renamed aside, removed only once the new folder is in place
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        _remove(tmp)
        _remove(old)


@contextmanager
def scratch_dir(path: str | Path) -> Iterator[Path]:
    """Yield a new, empty twin folder (`.<name>.tmp<pid>@<machine>`) beside `path` (those of killed writers removed
    first), removed afterwards, on success or failure: where an archive is unpacked, never a folder that was there
    before."""
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = twin(path)
    _remove(tmp)
    remove_orphans(path, folders=True)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        _remove(tmp)


@contextmanager
def atomic_files(path: str | Path) -> Iterator[Path]:
    """Yield a new, empty temporary folder beside the folder `path`; on success each file written there replaces
    its namesake in `path`, and only those: other files in `path` stay (a stage's report folder may hold the
    user's own). On failure nothing in `path` changes. Files only: a subfolder written there is refused."""
    path = Path(path)
    tmp = _new_twin(path)
    try:
        with disk_errors(path):
            yield tmp
            _fsync_tree(tmp)
        written = sorted(tmp.iterdir())
        if any(child.is_dir() for child in written):
            raise ValueError(f"atomic_files({path}) takes files only")
        for child in written:
            if (path / child.name).is_dir() and not (path / child.name).is_symlink():
                raise BadInput(
                    f"{path / child.name} is a folder where this stage writes a file; move it away; "
                    f"nothing in {path} was changed"
                )
        path.mkdir(exist_ok=True)
        with _stops_held():  # all the files, or none
            for child in written:
                os.replace(child, path / child.name)
        _fsync_dir(path)
    finally:
        _remove(tmp)


@contextmanager
def _stops_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM asked while the block runs are noted and delivered once it is done, to the handlers they
    would have reached (a stage's raise KeyboardInterrupt). Blocking the signal is not enough: the kernel gives a
    process's signal to any thread that does not block it. In the main thread only, where Python runs handlers."""
    stops = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or any(signal.getsignal(s) is None for s in stops):
        yield
        return
    noted: list[int] = []
    before = {s: signal.signal(s, lambda signum, frame: noted.append(signum)) for s in stops}
    try:
        yield
    finally:
        for stop, handler in before.items():
            signal.signal(stop, handler)
        for stop in noted[:1]:
            signal.raise_signal(stop)


def _fsync_tree(path: Path) -> None:
    """fsync a file, or every file and folder under a folder: their bytes reach the disk before the rename."""
    if path.is_symlink() or not path.exists():
        return
    if path.is_dir():
        for child in path.iterdir():
            _fsync_tree(child)
        _fsync_dir(path)
        return
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


# a path the user chose that cannot be written as given: named in one line, not a traceback
# a name that cannot be written, whatever the disk holds (EEXIST: a file where a folder on the way should be)
BAD_PATH = {
    errno.ENAMETOOLONG, errno.ENOTDIR, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR, errno.EINVAL, errno.EEXIST
}  # fmt: skip


# torch.save's zip writer reports a short write in its own words, without the errno
TORCH_WRITE_FAILED = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")


@contextmanager
def disk_errors(path: Path) -> Iterator[None]:
    """A write to (a temporary twin of) `path` that fails for want of space becomes one DiskFull line saying what
    is kept: `path` as it was before, since the new content only replaces it when complete."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, OSError) and exc.errno in BAD_PATH:
            raise BadInput(f"could not write {path}: {os.strerror(exc.errno)}; nothing was written") from None
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            reason = os.strerror(exc.errno)
        elif isinstance(exc, RuntimeError) and any(s in str(exc) for s in TORCH_WRITE_FAILED):
            reason = "write failed"
        else:
            raise
        kept = f"{path} as it was is kept" if path.exists() else "nothing was written"
        raise DiskFull(
            f"could not write {path} ({reason}): the disk is full or a file-size limit was reached; {kept}"
        ) from None


def remove_orphans(path: Path, marker: str = ".tmp", *, folders: bool = False) -> None:
    """Temporary twins of `path` (`.<name><marker><pid>`) left by writers that were killed (SIGKILL runs no
    cleanup): never read, removed. Only what those writers make: files, or folders with `folders` (atomic_dir)."""
    import glob

    prefix = f".{path.name}{marker}"
    for found in path.parent.glob(glob.escape(prefix) + "*"):
        if found.is_symlink() or found.is_dir() != folders:
            continue
        _remove_if_orphan(found, found.name[len(prefix) :])


ORPHAN = re.compile(r"\..+\.(?:tmp|old)(\d+(?:@[^@]+)?)")


def remove_orphans_in(directory: Path) -> None:
    """Every temporary twin (`.<name>.tmp<pid>@<machine>`, `.<name>.old<pid>@<machine>`) in `directory` whose
    writer is gone: a cache whose keys change (packs) would otherwise keep a killed writer's file for ever."""
    if directory.is_dir():
        for child in directory.iterdir():
            match = ORPHAN.fullmatch(child.name)
            if match and child.is_file() and not child.is_symlink():  # what the pack writer leaves: files
                _remove_if_orphan(child, match.group(1))


def _remove_if_orphan(found: Path, writer: str) -> None:
    """Remove the twin `found` if its writer (`<pid>@<machine>`, or `<pid>` as older versions named it) was a
    process of this machine that is gone; another machine's writer is never looked for here."""
    pid, _, machine = writer.partition("@")
    if machine and machine != MACHINE:
        return
    if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
        log.info("removing %s, left by a writer that was killed", found)
        _remove(found)


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command's name, which may hold spaces and parentheses: [0] is the
    state ("Z" a zombie), [19] the start time. OSError where there is no such process (or no /proc)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (another user's counts). A zombie has ended (its files closed, its
    locks let go): only its parent has not reaped it yet, and `kill(pid, 0)` still answers for it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    try:
        if proc_stat(pid)[0] != "Z":
            return True
        return len(os.listdir(f"/proc/{pid}/task")) > 1  # its main thread ended, others still run: alive
    except (OSError, IndexError):  # no /proc here, or the process went as it was read: as kill answered
        return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(path: str | Path, obj) -> None:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


ZIP_MAGIC = b"PK\x03\x04"  # how a zip archive starts, torch.save's format since torch 1.6


def load_tensors(path: str | Path):
    """torch.load with weights_only=True (tensors and plain values, never code): a file holding other Python
    objects, a pickle that could run code when loaded, is refused in one line naming it, and so is a file that is
    not a torch checkpoint at all (truncated, empty, another format). A zip archive (what torch.save writes) is
    checked before torch reads it (imgclf.archives), so it loads into no more memory than its own size."""
    import pickle
    import zipfile

    import torch

    from imgclf.archives import ArchiveRefused, checked_zip

    with open_regular(Path(path)) as f:
        try:
            if f.read(4) == ZIP_MAGIC:  # torch's own test of the format: anything else is its legacy pickle
                checked_zip(f).close()
            f.seek(0)  # the file checked, not whatever is at the path by now
            return torch.load(f, map_location="cpu", weights_only=True)
        except ArchiveRefused as exc:
            raise BadInput(f"{path}: refused: {exc}; only checkpoints as torch.save writes them are read") from None
        except pickle.UnpicklingError as exc:
            detail = next((line for line in str(exc).splitlines() if "Unsupported global" in line), "")
            if not detail and "weights_only" not in str(exc):
                raise BadInput(f"{path}: not a readable checkpoint ({_why(exc)})") from None
            raise BadInput(
                f"{path}: refused: it holds Python objects, not only tensors and plain values, and loading it could "
                f"run code; only weights-only checkpoints are read{f' ({detail.strip()})' if detail else ''}"
            ) from None
        except (RuntimeError, EOFError, ValueError, IndexError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            raise BadInput(f"{path}: not a readable checkpoint ({_why(exc)})") from None


def _why(exc: BaseException) -> str:
    """What torch.load said, and what it reads: a pickle's stray byte or key alone (`174812789`) tells nobody."""
    said = first_line(exc)
    said = said if any(c.isalpha() for c in said) else f"{type(exc).__name__}: {said}"
    return f"{said}; a checkpoint is a file torch.save wrote, .pt or .pth"
