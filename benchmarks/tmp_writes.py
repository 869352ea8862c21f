"""Where the test suite's temporary folders should live: a VGG16 training checkpoint (the model, AdamW's two moments:
about 1.6 GB, as `last.pt`) saved with `torch.save` into a folder on the disk's file system and into one in memory
(/dev/shm), alternated; wall time and the process's CPU (user, system) of each save, medians, and their ratio
(disk / memory). `make test` puts TMPDIR in /dev/shm when it has room: this is why.

    python benchmarks/tmp_writes.py [--disk /tmp] [--memory /dev/shm] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time

import torch


def checkpoint() -> dict:
    from torchvision.models import vgg16

    model = vgg16(num_classes=10)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return {"model": state, "optimizer": {k: (torch.zeros_like(v), torch.zeros_like(v)) for k, v in state.items()}}


def save(state: dict, root: str) -> tuple[float, float, float]:
    """(wall, user, system) seconds of one torch.save into a new folder under `root`, its file then removed."""
    folder = tempfile.mkdtemp(dir=root)
    try:
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        torch.save(state, os.path.join(folder, "last.pt"))
        os.sync()  # what the kernel still owes the disk is part of the cost
        wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    finally:
        shutil.rmtree(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disk", default="/tmp", help="a folder on the disk")
    parser.add_argument("--memory", default="/dev/shm", help="a folder in memory (tmpfs)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    state = checkpoint()
    size = sum(t.numel() * t.element_size() for t in torch.utils._pytree.tree_leaves(state)) / 1e9
    runs: dict[str, list[tuple[float, float, float]]] = {"disk": [], "memory": []}
    for _ in range(args.repeats):
        for name in runs:
            runs[name].append(save(state, getattr(args, name)))
    medians = {name: [statistics.median(r[i] for r in rows) for i in range(3)] for name, rows in runs.items()}
    print(f"torch.save of a {size:.2f} GB checkpoint, medians of {args.repeats}, alternated")
    print(f"{'':8} {'wall':>8} {'user':>8} {'system':>8}")
    for name, (wall, user, system) in medians.items():
        print(f"{name:8} {wall:7.2f}s {user:7.2f}s {system:7.2f}s")
    (dw, du, ds), (mw, mu, ms) = medians["disk"], medians["memory"]
    print(f"disk / memory: wall {dw / mw:.2f}, CPU {(du + ds) / (mu + ms):.2f}")


if __name__ == "__main__":
    main()
