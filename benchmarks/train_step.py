"""Project training loop vs a bare PyTorch loop, same model, batch, augmentation and in-memory data, side by side.

Prints images/s of each and their ratio (target: >= 0.95), plus fused vs default AdamW. Both loops augment with
the same kornia ops (`--augment`, a conf/augment preset; the bare loop calls them on the batch directly).
    python benchmarks/train_step.py [--arch alexnet] [--image-size 64] [--batch-size 32] [--batches 20]
                                    [--augment digits|photos|none]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from imgclf.config import compose
from imgclf.data.datasets import TensorImageDataset, build_loader
from imgclf.data.transforms import Preprocess, build_augment
from imgclf.inference import DeviceSetup
from imgclf.models.build import build_model
from imgclf.training.engine import Trainer, train_one_epoch

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def bare_loop(model, optimizer, images, labels, batch_size, device, *, augment=None) -> float:
    """The textbook loop: augment, normalise, forward, backward, step. Returns images/s."""
    criterion = nn.CrossEntropyLoss()
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
    model.train()
    start = time.perf_counter()
    for i in range(0, len(labels), batch_size):
        x = images[i : i + batch_size].to(device).float()
        if augment is not None:
            x = augment.ops(x / 255) * 255
        x = (x - mean) / std
        y = labels[i : i + batch_size].to(device)
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(labels) / (time.perf_counter() - start)


def project_loop(model, optimizer, images, labels, batch_size, device, *, augment=None) -> float:
    loader = build_loader(TensorImageDataset(images, labels), batch_size, shuffle=False)
    pre = Preprocess(MEAN, STD).to(device)
    trainer = Trainer(
        model, nn.CrossEntropyLoss(), optimizer, DeviceSetup(device), pre, augment=augment, log_every=10**9
    )
    metrics = train_one_epoch(trainer, loader, epoch=1)
    return metrics["train/images_per_sec"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="alexnet")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--augment", default="digits", choices=["digits", "photos", "none"])
    args = parser.parse_args()
    ops = compose([f"augment={args.augment}"]).augment.ops
    augment = build_augment(ops, args.image_size, seed=0) if ops else None
    device = torch.device("cpu")
    n = args.batch_size * args.batches
    images = torch.randint(0, 256, (n, 3, args.image_size, args.image_size), dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,))
    results: dict[str, list[float]] = {"bare": [], "project": [], "bare, unfused AdamW": []}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits every variant alike
        for name, loop, fused in (
            ("bare", bare_loop, True),
            ("project", project_loop, True),
            ("bare, unfused AdamW", bare_loop, False),
        ):
            torch.manual_seed(0)
            model = build_model(args.arch, 10).to(device)
            optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=fused)
            warm = slice(0, args.batch_size * 2)
            loop(model, optimizer, images[warm], labels[warm], args.batch_size, device, augment=augment)
            results[name].append(loop(model, optimizer, images, labels, args.batch_size, device, augment=augment))
    best = {k: max(v) for k, v in results.items()}
    print(
        f"{args.arch} {args.image_size}px batch {args.batch_size}, augment={args.augment}, {n} images, "
        f"best of {args.repeats}, "
        f"{torch.get_num_threads()} threads"
    )
    for name, ips in best.items():
        print(f"  {name:22s} {ips:8.1f} img/s")
    print(f"  project / bare         {best['project'] / best['bare']:8.3f}   (target >= 0.95)")
    print(f"  fused / unfused AdamW  {best['bare'] / best['bare, unfused AdamW']:8.3f}")


if __name__ == "__main__":
    main()
