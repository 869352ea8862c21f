"""What made a run: git commit and diff, the package's code version, the environment."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path


def git_state(cwd: str | Path = ".") -> dict[str, str]:
    """Commit hash and dirty flag of the repository at `cwd` (empty values outside git)."""

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    # untracked files (data, run outputs) are ignored; modified tracked files make the run dirty
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else False
    return {"commit": commit, "dirty": str(dirty).lower()}


def git_diff(cwd: str | Path = ".") -> str:
    """`git diff HEAD` of tracked files: what a dirty run ran beyond its commit."""
    try:
        out = subprocess.run(["git", "diff", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout if out.returncode == 0 else ""


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Short sha256 of the imgclf package's source: part of every run's record and of the resume fingerprint."""
    import hashlib

    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def environment() -> dict[str, str]:
    """What decides whether two runs can match bit for bit: library versions, CPU, threads, GPU."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "cuda": torch.version.cuda or "none",
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
    }
    for package in ("torch", "torchvision", "timm", "numpy", "pillow", "scikit-learn", "onnxruntime", "mlflow", "dvc"):
        try:
            env[package] = version(package)
        except PackageNotFoundError:
            env[package] = "not installed"
    return env


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; platform.processor() elsewhere)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
