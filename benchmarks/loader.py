"""Data loading against the model: can the loader feed training? Measured side by side in one run.

Prints, for a synthetic photo set (JPEGs of --photo-size px, like dogs-vs-cats) resized to the model's input:
  decode+resize images/s with 1 process and with all cores (the first load of a split), stored at the resize
  size (image size / 0.875), loader images/s from the packed cache (batches, the photos preset's augmentation
  and normalisation included),
  model training images/s (AlexNet at 64 px by default), and the loader/model ratio (want >> 1).
    python benchmarks/loader.py [--images 600] [--photo-size 400] [--image-size 64] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from imgclf.config import compose
from imgclf.data.datasets import TensorImageDataset, build_loader
from imgclf.data.images import decode_image
from imgclf.data.transforms import Preprocess, build_augment
from imgclf.inference import DeviceSetup
from imgclf.models.build import build_model
from imgclf.training.engine import Trainer, train_one_epoch

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def make_photos(root: Path, n: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        # smooth gradients plus noise: JPEG sizes like real photos, not like flat colour
        base = np.linspace(0, 255, size, dtype=np.float32)[None, :, None] * rng.random(3)[None, None, :]
        img = np.clip(base + rng.normal(0, 25, (int(size * 0.75), size, 3)), 0, 255).astype(np.uint8)
        path = root / f"{i}.jpg"
        Image.fromarray(img).save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--photo-size", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--arch", default="alexnet")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_photos(Path(tmp), args.images, args.photo_size)
        rates = {}
        stored = int(args.image_size / 0.875)
        for workers in (1, os.cpu_count() or 1):
            start = time.perf_counter()
            if workers > 1:  # the pack writer spreads over processes only from 2,000 images: call a pool here
                from concurrent.futures import ProcessPoolExecutor

                with ProcessPoolExecutor(workers) as pool:
                    packed = np.stack(list(pool.map(decode_image, paths, [stored] * len(paths), chunksize=32)))
            else:
                packed = np.stack([decode_image(p, stored) for p in paths])
            rates[workers] = len(paths) / (time.perf_counter() - start)
    images = torch.from_numpy(packed).permute(0, 3, 1, 2).contiguous()
    labels = torch.randint(0, 2, (len(images),))
    loader = build_loader(
        TensorImageDataset(images, labels), args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    aug = build_augment(compose(["augment=photos"]).augment.ops, args.image_size, seed=0)
    setup, pre = DeviceSetup(torch.device("cpu")), Preprocess(MEAN, STD)
    start, seen = time.perf_counter(), 0
    for _ in range(3):
        for x, _y in loader:
            setup.to_input(x, pre, aug)
            seen += len(x)
    loader_rate = seen / (time.perf_counter() - start)
    model = build_model(args.arch, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    trainer = Trainer(model, nn.CrossEntropyLoss(), opt, setup, pre, augment=aug, log_every=10**9)
    model_rate = train_one_epoch(trainer, loader, epoch=1)["train/images_per_sec"]
    print(
        f"{args.images} JPEGs of {args.photo_size}x{int(args.photo_size * 0.75)} -> {args.image_size} px, "
        f"{os.cpu_count()} cores"
    )
    for workers, rate in rates.items():
        print(f"  decode+resize, {workers} process(es)  {rate:9.1f} img/s")
    print(f"  parallel / single decode          {rates[max(rates)] / rates[1]:9.2f}")
    print(f"  loader from packed cache          {loader_rate:9.1f} img/s (batches, augmentation, normalisation)")
    print(f"  {args.arch} training               {model_rate:9.1f} img/s")
    print(f"  loader / model                    {loader_rate / model_rate:9.1f}   (> 1: loading never bounds training)")


if __name__ == "__main__":
    main()
