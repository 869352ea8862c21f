"""Artifacts into a store on this disk without a second copy of each model.

MLflow's local artifact repository copies every file it logs: a 690 MB checkpoint logged from models/model.pt is
690 MB more in mlruns/. For a run whose artifacts live on this file system (a SQLite or file store), files of a
megabyte or more are hard-linked into the run's artifact folder instead (one file on disk, two names) and made
read-only, so that writing into either name in place fails instead of changing the run's record; smaller files
are copied as MLflow would. Every file imgclf logs is written whole and renamed into place (a new file, never an
edit), so the run's link keeps what was logged. Anywhere else (a tracking server, another file system) MLflow
uploads as before.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from urllib.parse import unquote, urlparse

LINK_MIN_BYTES = 1 << 20  # below this a copy costs nothing worth a link


def local_artifact_dir(artifact_uri: str) -> Path | None:
    """The folder a run's artifacts live in, when it is a path on this machine; else None."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and artifact_uri.startswith("/"):
        return Path(artifact_uri)
    return None


def place_file(src: Path, dst: Path) -> None:
    """dst becomes src's content: a read-only hard link for a large file, else a copy; replaced whole."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        if src.stat().st_size >= LINK_MIN_BYTES:
            try:
                os.link(src, tmp)
                os.chmod(tmp, stat.S_IMODE(tmp.stat().st_mode) & ~0o222)  # the workspace's name too: one file
            except OSError:  # another file system, or links not allowed: a copy, as MLflow makes
                tmp.unlink(missing_ok=True)
                shutil.copy2(src, tmp)
        else:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def place_locally(artifact_dir: Path, path: Path, artifact_path: str | None) -> None:
    """What MlflowClient.log_artifact(s) does for a local store: a file under `artifact_path`, or a folder's
    contents there, with large files linked instead of copied."""
    dest = artifact_dir / artifact_path if artifact_path else artifact_dir
    if path.is_dir():
        for src in sorted(p for p in path.rglob("*") if p.is_file()):
            place_file(src, dest / src.relative_to(path))
    else:
        place_file(path, dest / path.name)


def share(artifact_dir: Path, files: dict[str, str]) -> None:
    """Make each of the run's logged copies (artifact path -> workspace file) a link to the workspace file when the
    bytes are the same. Under `dvc repro`, DVC copies a stage's outputs into its cache (it never moves a file that
    has another name) and links the workspace to that: the run's copy became a second one, and the next stage makes
    it one again."""
    import filecmp

    for rel, ours in files.items():
        logged, ours = artifact_dir / rel, Path(ours)
        if not (logged.is_file() and ours.is_file()) or os.path.samefile(logged, ours):
            continue
        if logged.stat().st_size >= LINK_MIN_BYTES and filecmp.cmp(logged, ours, shallow=False):
            place_file(ours, logged)
