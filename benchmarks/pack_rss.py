"""Peak RSS of a training process as the pack grows: the pack is memory-mapped, so it should stay flat.

For each size (default 0.5 and 5 GB) it writes a synthetic pack of 224 px images in the format packs have
(a (N, 3, S, S) uint8 .npy), then runs one epoch of real training batches over all of it (the project's
dataset, shuffled loader, Trainer and train_one_epoch; a small model and no augmentation, so reading dominates) in
a fresh process, and prints that process's peak RSS. `--in-memory` adds the same epoch with the pack loaded whole
(np.load without mmap), what packs were before.

    python benchmarks/pack_rss.py [--sizes-gb 0.5 5] [--dir /tmp] [--in-memory]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE = 224  # px: one image is 150 KB


def write_pack(path: Path, gigabytes: float) -> int:
    """A pack of ~`gigabytes` GB of 224 px images, written through a memory map in chunks (never whole)."""
    per_image = 3 * SIZE * SIZE
    n = int(gigabytes * 1e9 // per_image)
    pack = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 3, SIZE, SIZE))
    chunk = np.random.default_rng(0).integers(0, 256, (256, 3, SIZE, SIZE), dtype=np.uint8)
    for i in range(0, n, len(chunk)):
        pack[i : i + len(chunk)] = chunk[: n - i]
    pack.flush()
    del pack
    return n


def child(path: str, mmap: bool) -> None:
    """One epoch over the pack in this process; prints peak RSS and throughput as JSON."""
    import torch
    from torch import nn

    from imgclf.data.datasets import TensorImageDataset, build_loader
    from imgclf.data.transforms import Preprocess
    from imgclf.inference import DeviceSetup
    from imgclf.training.engine import Trainer, train_one_epoch

    images = np.load(path, mmap_mode="r" if mmap else None)
    labels = torch.randint(0, 10, (len(images),), generator=torch.Generator().manual_seed(0))
    loader = build_loader(TensorImageDataset(images, labels), 64, True, torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.AvgPool2d(16), nn.Flatten(), nn.Linear(3 * (SIZE // 16) ** 2, 10))
    setup = DeviceSetup(torch.device("cpu"))
    pre = Preprocess([0.5] * 3, [0.25] * 3)
    optimizer = torch.optim.SGD(model.parameters(), 0.01)
    trainer = Trainer(model, nn.CrossEntropyLoss(), optimizer, setup, pre, log_every=10**9)
    metrics = train_one_epoch(trainer, loader, epoch=1)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    peak_mb = int(status["VmHWM"].split()[0]) / 1024  # this process image's peak (ru_maxrss survives exec)
    print(json.dumps({"peak_rss_mb": peak_mb, "images_per_sec": metrics["train/images_per_sec"]}))


def measure(path: Path, mmap: bool) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(path), *(["--mmap"] if mmap else [])],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-gb", type=float, nargs="+", default=[0.5, 5.0])
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the synthetic packs go (deleted after)")
    parser.add_argument("--in-memory", action="store_true", help="also run the smallest pack loaded whole")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mmap", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.mmap)
        return
    print(f"one training epoch over a pack of {SIZE} px images, shuffled batches of 64, CPU")
    print(f"  {'pack':>8s} {'images':>8s} {'load':>10s} {'peak RSS':>10s} {'img/s':>8s} {'write s':>8s}")
    results = []
    for gb in args.sizes_gb:
        path = Path(args.dir) / f"imgclf-rss-{gb}gb.npy"
        try:
            start = time.perf_counter()
            n = write_pack(path, gb)
            written = time.perf_counter() - start
            for mmap in (True, False) if args.in_memory and gb == min(args.sizes_gb) else (True,):
                r = measure(path, mmap)
                results.append((gb, mmap, r))
                load = "mmap" if mmap else "in memory"
                print(
                    f"  {gb:6.1f}GB {n:8d} {load:>10s} {r['peak_rss_mb']:8.0f}MB {r['images_per_sec']:8.0f} "
                    f"{written:8.1f}"
                )
        finally:
            path.unlink(missing_ok=True)
    mapped = [r["peak_rss_mb"] for _, m, r in results if m]
    print(f"  peak RSS largest / smallest pack (mmap): {mapped[-1] / mapped[0]:.2f}  (flat: about 1.0)")


if __name__ == "__main__":
    main()
