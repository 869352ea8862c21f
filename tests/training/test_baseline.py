"""The pixel baseline a training run is held against, and the one line it prints when the network falls short."""

import torch

from imgclf.data.datasets import TensorImageDataset
from imgclf.training.baseline import pixel_baseline, verdict


def blobs(n: int, seed: int) -> TensorImageDataset:
    """Two classes a linear model separates: dark images and bright ones, with noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    noise = torch.randint(0, 50, (n, 3, 20, 20), generator=g)
    images = (60 + 120 * labels[:, None, None, None] + noise).to(torch.uint8)
    return TensorImageDataset(images, labels)


def test_the_baseline_scores_what_raw_pixels_give():
    assert pixel_baseline(blobs(40, 0), blobs(20, 1)) == 1.0


def test_near_chance_or_below_the_baseline_is_one_line_with_what_to_try():
    near = verdict(0.12, 0.97, 10)
    assert near.startswith("val/acc 0.1200 is near chance (0.100 for 10 classes): try more steps")
    below = verdict(0.50, 0.97, 10)
    assert below.startswith("val/acc 0.5000 is well below logistic regression on 16 px grayscale pixels of the same")
    assert "(0.9700)" in below and "imgclf lr-find" in below
    assert verdict(0.95, 0.97, 10) is None and verdict(0.99, float("nan"), 10) is None
    assert verdict(0.52, float("nan"), 2) is not None  # two classes: 0.52 is a coin


def test_auto_epochs_give_a_short_epoch_more_of_them():
    from imgclf.options import Trainer

    auto = Trainer.build({"epochs": "auto", "batch_size": 64}, "trainer")
    assert (auto.min_epochs, auto.min_steps) == (12, 240)
    assert auto.epochs_for(20) == 12  # the digits default: 1,257 images in batches of 64
    assert auto.epochs_for(10) == 24  # a folder of 630 training images
    assert auto.epochs_for(700) == 12  # CIFAR-10: never fewer than min_epochs
    assert Trainer.build({"epochs": 3, "batch_size": 64}, "trainer").epochs_for(1) == 3  # an integer is exact
