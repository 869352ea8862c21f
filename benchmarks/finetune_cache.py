"""finetune=head: an epoch through the frozen backbone vs an epoch of the head on features cached once, side by side.

Both variants run the project's own code on the same in-memory uint8 images, interleaved in one process:
  frozen   Trainer(model, frozen_backbone=True) after set_backbone_trainable(model, False): every epoch
           runs the backbone forward again (what finetune.cache_features=false, or data.augment, costs)
  cached   compute_features() once (the one-off cost), then Trainer(head(model), preprocess=None) per epoch,
           as the train stage does for finetune=head with finetune.cache_features=true
Prints images/s of each epoch, the caching cost, the per-epoch speed-up and the speed-up of a whole N-epoch
run with the caching included. Only the train split is timed; the stage also caches the val split, whose
per-epoch evaluation saves the same backbone pass.
    python benchmarks/finetune_cache.py [--arch vgg16|alexnet] [--source torchvision|timm] [--image-size 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from imgclf.data.datasets import TensorImageDataset, build_loader
from imgclf.data.transforms import Preprocess
from imgclf.inference import DeviceSetup, compute_features
from imgclf.models.build import build_model, head, set_backbone_trainable
from imgclf.training.engine import Trainer, train_one_epoch
from imgclf.training.optimizers import param_groups

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def frozen_model(args, device) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A fresh network with its backbone frozen and the stage's optimizer (AdamW over param_groups)."""
    torch.manual_seed(0)
    model = build_model(args.arch, args.classes, source=args.source).to(device)
    set_backbone_trainable(model, False)
    # over every group, as the stage does: frozen parameters get no gradient, so AdamW skips them
    optimizer = torch.optim.AdamW(param_groups(model, 5e-4, 0.01), lr=5e-4, fused=True)
    return model, optimizer


def epoch(trainer: Trainer, dataset: TensorImageDataset, batch_size: int) -> float:
    """One shuffled epoch over `dataset` through the project's train_one_epoch; returns images/s."""
    loader = build_loader(dataset, batch_size, True, torch.Generator().manual_seed(0))
    return train_one_epoch(trainer, loader, epoch=1)["train/images_per_sec"]


def run_frozen(args, setup, data, warm) -> dict[str, float]:
    model, optimizer = frozen_model(args, setup.device)
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        optimizer,
        setup,
        Preprocess(MEAN, STD).to(setup.device),
        frozen_backbone=True,
        log_every=10**9,
    )
    epoch(trainer, warm, args.batch_size)  # warm-up: first calls pick kernels and grow the allocator
    return {"epoch": epoch(trainer, data, args.batch_size)}


def run_cached(args, setup, data, warm) -> dict[str, float]:
    model, optimizer = frozen_model(args, setup.device)
    preprocess = Preprocess(MEAN, STD).to(setup.device)
    compute_features(model, build_loader(warm, args.batch_size, False), setup, preprocess)  # warm-up
    start = time.perf_counter()
    # in index order, unshuffled, as the stage caches; the result stays on the CPU like the stage's cache
    feats = TensorImageDataset(*compute_features(model, build_loader(data, args.batch_size, False), setup, preprocess))
    cache_s = time.perf_counter() - start
    trainer = Trainer(head(model), nn.CrossEntropyLoss(), optimizer, setup, preprocess=None, log_every=10**9)
    epoch(trainer, TensorImageDataset(feats.images[: len(warm)], feats.labels[: len(warm)]), args.batch_size)
    return {"cache_s": cache_s, "epoch": epoch(trainer, feats, args.batch_size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--source", default="torchvision", choices=("torchvision", "timm"))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, nargs="+", default=[3, 10], help="run lengths for the whole-run ratio")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    setup = DeviceSetup.for_device(torch.device("cpu"))
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, args.image_size, args.image_size), dtype=torch.uint8)
    data = TensorImageDataset(images, torch.randint(0, args.classes, (args.images,)))
    warm = TensorImageDataset(images[: 2 * args.batch_size], data.labels[: 2 * args.batch_size])
    results: dict[str, list[dict[str, float]]] = {"frozen": [], "cached": []}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both variants alike
        results["frozen"].append(run_frozen(args, setup, data, warm))
        results["cached"].append(run_cached(args, setup, data, warm))
    frozen_ips = statistics.median(r["epoch"] for r in results["frozen"])
    cached_ips = statistics.median(r["epoch"] for r in results["cached"])
    cache_s = statistics.median(r["cache_s"] for r in results["cached"])
    frozen_s, cached_s = args.images / frozen_ips, args.images / cached_ips
    print(
        f"{args.source} {args.arch} {args.image_size}px batch {args.batch_size}, {args.images} images, "
        f"median of {args.repeats}, {torch.get_num_threads()} threads"
    )
    print(f"  frozen backbone, per epoch  {frozen_ips:10.1f} img/s  {frozen_s:8.3f} s")
    print(f"  cached features, per epoch  {cached_ips:10.1f} img/s  {cached_s:8.3f} s")
    print(f"  caching, once               {args.images / cache_s:10.1f} img/s  {cache_s:8.3f} s")
    print(f"  per-epoch speed-up          {frozen_s / cached_s:10.1f}x")
    for n in args.epochs:  # the caching pass is paid once, so the gain approaches n for long runs
        print(
            f"  {n:3d}-epoch run speed-up      {n * frozen_s / (cache_s + n * cached_s):10.2f}x  "
            f"({n * frozen_s:.2f} s vs {cache_s + n * cached_s:.2f} s)"
        )


if __name__ == "__main__":
    main()
