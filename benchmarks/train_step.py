"""Project training loop vs a bare PyTorch loop, same model, batch, augmentation and in-memory data, side by side.

Prints images/s of each and their ratio (target: >= 0.95), plus fused vs default AdamW. Both loops augment with
the same kornia ops (`--augment`, a conf/augment preset; the bare loop calls them on the batch directly).
    python benchmarks/train_step.py [--arch alexnet] [--image-size 64] [--batch-size 32] [--batches 20]
                                    [--augment digits|photos|none] [--device cpu|cuda]
On CUDA both loops run as the train stage does there (bf16 autocast, or fp16 with loss scaling, and channels_last
inputs), and a third row gives the project loop in fp32 (trainer.amp=false trainer.channels_last=false).
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


def bare_loop(model, optimizer, images, labels, batch_size, setup, *, augment=None) -> float:
    """The textbook loop: augment, normalise, forward, backward, step. Returns images/s."""
    device, criterion = setup.device, nn.CrossEntropyLoss()
    scaler = setup.grad_scaler()
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
    model.train()
    start = time.perf_counter()
    for i in range(0, len(labels), batch_size):
        x = images[i : i + batch_size].to(device).float()
        if augment is not None:
            x = augment.ops(x / 255) * 255
        x = (x - mean) / std
        if setup.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels[i : i + batch_size].to(device)
        with setup.autocast():
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(labels) / (time.perf_counter() - start)


def project_loop(model, optimizer, images, labels, batch_size, setup, *, augment=None) -> float:
    pin = setup.device.type == "cuda"
    loader = build_loader(TensorImageDataset(images, labels), batch_size, shuffle=False, pin_memory=pin)
    pre = Preprocess(MEAN, STD).to(setup.device)
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        optimizer,
        setup,
        pre,
        scaler=setup.grad_scaler(),
        augment=augment,
        log_every=10**9,
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
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    ops = compose([f"augment={args.augment}"]).augment.ops
    augment = build_augment(ops, args.image_size, seed=0) if ops else None
    device = torch.device(args.device)
    setup, fp32 = DeviceSetup.for_device(device), DeviceSetup(device)  # as trainer.amp/channels_last default, and off
    n = args.batch_size * args.batches
    images = torch.randint(0, 256, (n, 3, args.image_size, args.image_size), dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,))
    variants = [("bare", bare_loop, True, setup), ("project", project_loop, True, setup)]
    variants.append(("bare, unfused AdamW", bare_loop, False, setup))
    if device.type == "cuda":
        variants.append(("project, fp32 NCHW", project_loop, True, fp32))
    results: dict[str, list[float]] = {name: [] for name, *_ in variants}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits every variant alike
        for name, loop, fused, how in variants:
            torch.manual_seed(0)
            model = build_model(args.arch, 10).to(device)
            optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=fused)
            warm = slice(0, args.batch_size * 2)
            loop(model, optimizer, images[warm], labels[warm], args.batch_size, how, augment=augment)
            results[name].append(loop(model, optimizer, images, labels, args.batch_size, how, augment=augment))
    best = {k: max(v) for k, v in results.items()}
    print(
        f"{args.arch} {args.image_size}px batch {args.batch_size}, augment={args.augment}, {n} images, "
        f"best of {args.repeats}, "
        + (f"{torch.cuda.get_device_name()}, AMP {setup.amp_dtype}, " if device.type == "cuda" else "")
        + f"{torch.get_num_threads()} threads"
    )
    for name, ips in best.items():
        print(f"  {name:22s} {ips:8.1f} img/s")
    print(f"  project / bare         {best['project'] / best['bare']:8.3f}   (target >= 0.95)")
    print(f"  fused / unfused AdamW  {best['bare'] / best['bare, unfused AdamW']:8.3f}")
    if device.type == "cuda":
        print(f"  AMP+NHWC / fp32 NCHW   {best['project'] / best['project, fp32 NCHW']:8.3f}")


if __name__ == "__main__":
    main()
