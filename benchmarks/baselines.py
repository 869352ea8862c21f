"""The default against what a user could write instead, side by side on this machine, on the project's digits split:

  classical: scikit-learn on the raw 8x8 pixels (logistic regression, k-NN, RBF SVM), on the project's split and
             two more stratified splits (seeds 1 and 2), train+val to fit, test to score;
  hand loop: a 60-line PyTorch loop (torchvision ImageFolder, RandomAffine(8 deg, 8% translate), AdamW 5e-4,
             one-cycle, AlexNet at 64 px, 12 epochs, DataLoader with 2 workers) on the project's split;
  project:   the default pipeline's train + evaluate stages (what `dvc repro` runs), one run per seed.

    python benchmarks/baselines.py [--seeds 42 1 2 3 4] [--skip classical hand project]

Run from the project root after `dvc repro split` (data/digits/split must exist). Prints one table per part and
the project/hand-loop training images/s ratio.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "digits"


def pixels(rows: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.stack([np.asarray(Image.open(DATA / "images" / p), np.float32).ravel() / 255 for p, _ in rows]),
        np.array([int(label) for _, label in rows]),
    )


def classical() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    from imgclf.data.split import read_index, stratified_split

    project = {s: read_index(DATA / "split" / f"{s}.csv") for s in ("train", "val", "test")}
    everything = sorted(project["train"] + project["val"] + project["test"])
    splits = {"project (seed 0)": project, **{f"seed {s}": stratified_split(everything, 0.1, 0.2, s) for s in (1, 2)}}
    models = {
        "logistic regression": lambda: LogisticRegression(max_iter=5000),
        "k-NN (k=5)": lambda: KNeighborsClassifier(5),
        "RBF SVM": lambda: SVC(kernel="rbf", gamma="scale"),
    }
    print(f"\nclassical, raw 8x8 pixels, test/acc on {len(project['test'])} test images")
    print(f"  {'model':22s} " + " ".join(f"{name:>17s}" for name in splits))
    for name, make in models.items():
        accs = []
        for split in splits.values():
            x, y = pixels(split["train"] + split["val"])
            xt, yt = pixels(split["test"])
            accs.append(float((make().fit(x, y).predict(xt) == yt).mean()))
        print(f"  {name:22s} " + " ".join(f"{a:17.4f}" for a in accs))


def hand_loop(epochs: int = 12, seed: int = 42) -> float:
    """The loop a user writes from the PyTorch tutorials; returns its training images/s."""
    from torchvision import datasets, models, transforms

    from imgclf.data.split import read_index

    torch.manual_seed(seed)
    norm = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train_tf = transforms.Compose(
        [transforms.Resize(64), transforms.RandomAffine(8, translate=(0.08, 0.08)), transforms.ToTensor(), norm]
    )
    test_tf = transforms.Compose([transforms.Resize(64), transforms.ToTensor(), norm])

    def folder(split: str, tf) -> datasets.ImageFolder:
        keep = {str(DATA / "images" / p) for p, _ in read_index(DATA / "split" / f"{split}.csv")}
        return datasets.ImageFolder(str(DATA / "images"), tf, is_valid_file=lambda p: p in keep)

    train_loader = torch.utils.data.DataLoader(folder("train", train_tf), 64, shuffle=True, num_workers=2)
    test_loader = torch.utils.data.DataLoader(folder("test", test_tf), 256, num_workers=2)
    model = models.alexnet(num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 5e-4, total_steps=epochs * len(train_loader))
    loss_fn = torch.nn.CrossEntropyLoss()
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in train_loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            seen += len(y)
    train_rate = seen / (time.perf_counter() - start)
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for x, y in test_loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    print(f"\nhand-written loop (seed {seed}): test/acc {correct / total:.4f}, training {train_rate:.1f} img/s")
    return train_rate


def project(seeds: list[int]) -> float:
    """The default's train and evaluate stages per seed, into a temporary directory; returns mean images/s."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            out = Path(tmp) / f"seed{seed}"
            overrides = [
                f"seed={seed}",
                f"paths.models={out}/models",
                f"paths.reports={out}/reports",
                f"paths.checkpoints={out}/checkpoints",
                f"tracking.uri=sqlite:///{tmp}/mlflow.db",
                f"hydra.run.dir={out}/hydra",
                "trainer.resume=never",
            ]
            start = time.perf_counter()
            for stage in ("train", "evaluate"):
                subprocess.run(
                    [sys.executable, "-m", f"imgclf.stages.{stage}", *overrides],
                    cwd=ROOT,
                    check=True,
                    stdout=subprocess.DEVNULL,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
                if stage == "train":
                    train_s = time.perf_counter() - start
            metrics = json.loads((out / "reports/evaluate/metrics.json").read_text())
            history = list(csv.DictReader((out / "reports/train/history.csv").read_text().splitlines()))
            rate = statistics.mean(float(h["train/images_per_sec"]) for h in history)
            rows.append(
                (seed, metrics["test/acc"], metrics.get("test_tta/acc"), metrics["test/macro_f1"], train_s, rate)
            )
    print("\nproject default (train + evaluate stages)")
    print(f"  {'seed':>5s} {'test/acc':>9s} {'tta acc':>8s} {'macro-F1':>9s} {'train s':>8s} {'img/s':>7s}")
    for seed, acc, tta, f1, train_s, rate in rows:
        print(f"  {seed:5d} {acc:9.4f} {tta or float('nan'):8.4f} {f1:9.4f} {train_s:8.1f} {rate:7.1f}")
    accs = [r[1] for r in rows]
    spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"  test/acc mean {statistics.mean(accs):.4f} sd {spread:.4f} min {min(accs):.4f} max {max(accs):.4f}")
    return statistics.mean(r[5] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    parser.add_argument("--skip", nargs="*", default=[], choices=["classical", "hand", "project"])
    args = parser.parse_args()
    if not (DATA / "split" / "test.csv").is_file():
        sys.exit("error: data/digits/split not found; run `dvc repro split` first")
    print(f"torch {torch.__version__}, {os.cpu_count()} cores")
    if "classical" not in args.skip:
        classical()
    hand = hand_loop() if "hand" not in args.skip else None
    mine = project(args.seeds) if "project" not in args.skip else None
    if hand and mine:
        print(f"\nproject / hand-written loop, training images/s: {mine / hand:.2f}  (target >= 1.5)")


if __name__ == "__main__":
    main()
