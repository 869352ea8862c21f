"""The augmentation alone against the model it feeds: images/s of augmenting a batch on the CPU (kornia, random
parameters per image) beside the model's training images/s, for the digits and photos presets (target >= 10x).

    python benchmarks/augment.py [--batches 10]

digits: AlexNet at 64 px, batches of 64 from 64 px images (the default). photos: AlexNet at 224 px, batches of 32
random resized crops from 256 px images (the weights' preprocessing).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from imgclf.config import compose
from imgclf.data.transforms import Preprocess, build_augment
from imgclf.inference import DeviceSetup
from imgclf.models.build import build_model
from imgclf.training.engine import Trainer, optimizer_step

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CASES = {"digits": (64, 64, 64), "photos": (256, 224, 32)}  # preset: stored px, model px, batch


def rate(fn, batch: int, batches: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        fn()
    return batch * batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"  {'preset':8s} {'augment img/s':>14s} {'train img/s':>12s} {'ratio':>7s}   (target >= 10x)")
    for preset, (stored, size, batch) in CASES.items():
        aug_rate, train_rate = measure(preset, stored, size, batch, args.batches)
        print(f"  {preset:8s} {aug_rate:14.0f} {train_rate:12.1f} {aug_rate / train_rate:6.1f}x")


def measure(preset: str, stored: int, size: int, batch: int, batches: int) -> tuple[float, float]:
    """(augmentation images/s, training images/s) for one preset, one batch size."""
    augment = build_augment(compose([f"augment={preset}"]).augment.ops, size, seed=0)
    images = torch.randint(0, 256, (batch, 3, stored, stored), dtype=torch.uint8)
    labels = torch.randint(0, 10, (batch,))
    aug_rate = rate(lambda: augment(images), batch, batches)
    model = build_model("alexnet", 10)
    trainer = Trainer(
        model, nn.CrossEntropyLoss(), torch.optim.AdamW(model.parameters()), DeviceSetup(torch.device("cpu"))
    )
    x, params = Preprocess(MEAN, STD)(augment(images)), list(model.parameters())

    def step():
        optimizer_step(trainer, trainer.criterion(model(x), labels), params)

    return aug_rate, rate(step, batch, max(2, batches // 3))


if __name__ == "__main__":
    main()
