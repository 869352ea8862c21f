"""The pixel baseline a training run is held against, and the one line it prints when the network falls short."""

import json
import os

import pytest
import sklearn.linear_model
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


def test_the_baseline_scores_what_raw_pixels_give(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # fitted here, not read from an earlier test's cache
    assert pixel_baseline(blobs(40, 0), blobs(20, 1)) == 1.0


def test_the_score_is_kept_by_the_content_of_the_pixels_and_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    train, val = blobs(40, 0), blobs(20, 1)
    assert pixel_baseline(train, val) == 1.0
    (kept,) = (tmp_path / "imgclf" / "baseline").iterdir()
    assert json.loads(kept.read_text()) == {"val/acc": 1.0}

    class NoFit:
        def __init__(self, **settings):
            raise AssertionError("fitted again")

    monkeypatch.setattr(sklearn.linear_model, "LogisticRegression", NoFit)
    assert pixel_baseline(blobs(40, 0), blobs(20, 1)) == 1.0  # the same content: read, not fitted
    kept.write_text(json.dumps({"val/acc": 0.25}))
    assert pixel_baseline(train, val) == 0.25  # what is read is the kept file's (the test's own edit)

    changed = blobs(40, 0)
    changed.images[0, :, :10] = 255  # one image of the train split: another digest
    relabelled = blobs(20, 1)
    relabelled.labels[0] = 1 - relabelled.labels[0]  # one label of the val split: another digest
    for other in ((changed, val), (train, relabelled)):
        with pytest.raises(AssertionError, match="fitted again"):
            pixel_baseline(*other)

    kept.unlink()
    os.mkfifo(kept)  # a pipe where the file was: not read (it would block), fitted again
    with pytest.raises(AssertionError, match="fitted again"):
        pixel_baseline(train, val)
    kept.unlink()
    kept.write_text("{")  # an unreadable file is fitted again, and replaced
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert pixel_baseline(train, val) == 1.0 and json.loads(kept.read_text()) == {"val/acc": 1.0}


def test_a_cache_that_cannot_be_written_costs_a_fit_not_the_result(tmp_path, monkeypatch, caplog):
    (tmp_path / "imgclf").write_text("a file where the cache's folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert pixel_baseline(blobs(40, 0), blobs(20, 1)) == 1.0
    assert "pixel baseline not kept" in caplog.text


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
