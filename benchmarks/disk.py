"""What one run of the pipeline leaves on disk, per folder, and which large files are stored more than once.

    make pipeline && python benchmarks/disk.py [PROJECT]

Counts each file once per inode (hard links are free), then lists the files over 1 MB whose content appears in
more than one place (DVC's cache, MLflow's artifacts, the workspace), with the bytes the extra copies take.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections import defaultdict
from pathlib import Path

FOLDERS = ("data", "models", "reports", "checkpoints", "mlruns", "mlflow.db", ".dvc/cache")
LARGE = 1 << 20


def digest(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("project", nargs="?", default=".")
    root = Path(parser.parse_args().project)
    seen, copies, total = set(), defaultdict(list), 0
    print(f"{'folder':14s} {'MB':>9s} {'files':>7s}")
    for name in FOLDERS:
        top = root / name
        files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file() and not p.is_symlink()]
        size = 0
        for path in files:
            stat = path.stat()
            if (stat.st_dev, stat.st_ino) in seen:
                continue
            seen.add((stat.st_dev, stat.st_ino))
            size += stat.st_size
            if stat.st_size > LARGE:
                copies[(stat.st_size, digest(path))].append(path.relative_to(root))
        total += size
        print(f"{name:14s} {size / 1e6:9.1f} {len(files):7d}")
    print(f"{'total':14s} {total / 1e6:9.1f}")
    extra = 0
    print("\nlarge files stored more than once (a copy each, not a link):")
    for (size, _), paths in sorted(copies.items(), key=lambda kv: -kv[0][0] * len(kv[1])):
        if len(paths) > 1:
            extra += size * (len(paths) - 1)
            print(f"  {size / 1e6:7.1f} MB x {len(paths)}: " + ", ".join(map(str, paths)))
    print(f"extra copies: {extra / 1e6:.1f} MB of {total / 1e6:.1f} MB ({os.cpu_count()} cores machine)")


if __name__ == "__main__":
    main()
