"""Uneven classes: data.balance=weights (a class-weighted loss) and sampler (class-balanced batches) raise the recall
of a class with few training images, from the command line; balanced accuracy in every evaluation; the data report
flags the small class."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from imgclf.data.folder import scan_image_folder
from imgclf.data.report import build_report
from imgclf.data.sampling import ShardedBatchSampler, class_weights, sample_weights
from imgclf.data.split import write_split
from imgclf.files import write_json

from ..conftest import TINY_OVERRIDES, empty_mlflow_store
from .test_every_option import run_stage

TRAIN = {"a": 60, "b": 60, "c": 5}  # c: 5 training images against 60


def uneven_project(root, test_per_class=20, spread=15.0, noise=60.0):
    """data/tiny: 3 classes whose mean colours differ a little under heavy noise; train uneven, val/test even."""
    rng = np.random.default_rng(0)
    images, splits = root / "data" / "tiny" / "images", {"train": [], "val": [], "test": []}
    for c, (name, n_train) in enumerate(TRAIN.items()):
        (images / name).mkdir(parents=True)
        mean = np.full((8, 8, 3), 128.0)
        mean[..., c] += spread
        for split, n in (("train", n_train), ("val", test_per_class // 2), ("test", test_per_class)):
            for i in range(n):
                path = f"{name}/{split}{i:03d}.png"
                pixels = np.clip(mean + rng.normal(0, noise, mean.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(images / path)
                splits[split].append((path, name))
    scan = scan_image_folder(images)
    splits = {k: sorted(v) for k, v in splits.items()}
    digests = {path: info.sha256 for path, info in scan.info.items()}
    write_split(root / "data" / "tiny" / "split", splits, scan.class_names, 4, seed=0, digests=digests)
    write_json(root / "data" / "tiny" / "split" / "report.json", build_report(scan, splits, min_class_images=20))
    empty_mlflow_store(root / "mlflow.db")
    return root


@pytest.mark.slow
def test_balance_raises_the_recall_of_a_small_class_from_the_command_line(tmp_path, monkeypatch):
    recall = {}
    for balance in ("none", "weights", "sampler"):
        project = uneven_project(tmp_path / balance)
        monkeypatch.chdir(project)
        overrides = (*TINY_OVERRIDES, "trainer.epochs=4", f"tracking.uri=sqlite:///{project}/mlflow.db")
        run_stage("train", *overrides, f"data.balance={balance}")
        run_stage("evaluate", *overrides)
        metrics = json.loads((project / "reports/evaluate/metrics.json").read_text())
        recalls = [metrics[f"test/recall/{c}"] for c in TRAIN]
        assert metrics["test/balanced_acc"] == pytest.approx(np.mean(recalls))  # even test set: mean recall
        recall[balance] = metrics["test/recall/c"]
    assert recall["weights"] > recall["none"] + 0.1, recall
    assert recall["sampler"] > recall["none"] + 0.1, recall


def test_the_data_report_flags_classes_under_the_threshold(tmp_path):
    uneven_project(tmp_path)
    report = json.loads((tmp_path / "data/tiny/split/report.json").read_text())
    assert report["small_classes"] == {"min_class_images": 20, "classes": [{"class": "c", "train_images": 5}]}


def test_class_weights_even_out_the_classes_in_the_loss():
    labels = torch.tensor([0] * 60 + [1] * 60 + [2] * 5)
    weights = class_weights(labels, 4)  # class 3: no training image
    totals = torch.bincount(labels, minlength=4).float() * weights
    assert torch.allclose(totals[:3], totals[0].expand(3)) and weights[3] == 0


def test_the_balanced_sampler_draws_classes_evenly_deterministically_and_resumably():
    labels = torch.tensor([0] * 600 + [1] * 600 + [2] * 50)

    def order(generator):
        sampler = ShardedBatchSampler(len(labels), 50, True, generator, weights=sample_weights(labels))
        return [i for batch in sampler for i in batch]

    drawn = order(torch.Generator().manual_seed(0))
    share = torch.bincount(labels[drawn], minlength=3).float() / len(drawn)
    assert torch.allclose(share, torch.full((3,), 1 / 3), atol=0.05)  # against 0.48 / 0.48 / 0.04 in the data
    assert drawn == order(torch.Generator().manual_seed(0))
    resumed = torch.Generator().manual_seed(0)
    order(resumed)  # epoch 1 drawn; a checkpoint keeps the generator's state
    saved = resumed.get_state()
    assert order(resumed) == order(torch.Generator().set_state(saved))  # epoch 2 is the same after a resume
