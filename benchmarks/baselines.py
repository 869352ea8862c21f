"""The default against what a user could write instead, side by side on this machine, on the project's digits split:

  classical: scikit-learn on the raw 8x8 pixels (logistic regression, k-NN, RBF SVM), on the project's split and
             two more stratified splits (seeds 1 and 2), train+val to fit, test to score;
  hand loop: a 60-line PyTorch loop (torchvision ImageFolder, RandomAffine(8 deg, 8% translate), AdamW 5e-4,
             one-cycle, AlexNet at 64 px, 12 epochs, DataLoader with 2 workers) on the project's split;
  project:   the default pipeline's train + evaluate stages (what `dvc repro` runs), one run per seed.

    python benchmarks/baselines.py [--seeds 42 1 2 3 4] [--skip classical hand project]
    python benchmarks/baselines.py --folder [--seeds 0 1 2] [--set augment=digits ...]

--folder: DIGITS' lab instead (user story 1): a folder of 900 handwritten digits, 28 px PNG, 90 per class, three
broken files, built from scikit-learn's digit scans (upscaled as MNIST's are drawn: white on black); the RBF SVM
and logistic regression on raw pixels, and the project's fetch, split, train and evaluate stages with nothing but
`data=folder data.path=...` (plus --set overrides), each on stratified 85/15 splits of the same seeds.

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


def make_digits_folder(dest: Path, per_class: int = 90, size: int = 28, broken: int = 3) -> Path:
    """DIGITS' train_small in miniature: `per_class` digit scans per class at `size` px, PNG, white on black."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    for label in range(10):
        (dest / str(label)).mkdir(parents=True, exist_ok=True)
        chosen = rng.choice(np.flatnonzero(digits.target == label), per_class, replace=False)
        for i in chosen:
            pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
            Image.fromarray(pixels, "L").resize((size, size), Image.BILINEAR).save(dest / str(label) / f"{i:04d}.png")
    for k in range(broken):  # what real folders hold: a truncated download, a stray file named like an image
        (dest / str(k) / f"broken{k}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    return dest


def folder_lab(seeds: list[int], extra: list[str]) -> None:
    """The DIGITS lab on a folder: classical baselines beside the project's stages, per seed."""
    from mlflow.tracking import MlflowClient
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.svm import SVC

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_digits_folder(Path(tmp) / "train_small")
        files = sorted(p for p in folder.rglob("*.png") if not p.name.startswith("broken"))
        x = np.stack([np.asarray(Image.open(p), np.float32).ravel() / 255 for p in files])
        y = np.array([int(p.parent.name) for p in files])
        print(f"\nDIGITS lab: {len(files)} images of {folder} (+3 broken), 28 px; test/acc on 15% stratified splits")
        print(
            f"  {'seed':>5s} {'RBF SVM':>8s} {'log.reg.':>8s} {'imgclf':>8s} {'epochs':>7s} {'augment':>8s} {'s':>6s}"
        )
        for seed in seeds:
            xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.15, stratify=y, random_state=seed)
            svm = float((SVC(kernel="rbf", gamma="scale").fit(xtr, ytr).predict(xte) == yte).mean())
            lr = float((LogisticRegression(max_iter=5000).fit(xtr, ytr).predict(xte) == yte).mean())
            out = Path(tmp) / f"seed{seed}"
            overrides = [
                "data=folder",
                f"data.path={folder}",
                f"data.split.seed={seed}",
                f"seed={seed}",
                *(f"paths.{k}={out}/{k}" for k in ("data", "models", "reports", "checkpoints")),
                f"tracking.uri=sqlite:///{tmp}/mlflow.db",
                f"hydra.run.dir={out}/hydra",
                "trainer.resume=never",
                *extra,
            ]
            start = time.perf_counter()
            for stage in ("fetch", "split", "train", "evaluate"):
                subprocess.run(
                    [sys.executable, "-m", f"imgclf.stages.{stage}", *overrides],
                    cwd=ROOT,
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
            acc = json.loads((out / "reports/evaluate/metrics.json").read_text())["test/acc"]
            trained = json.loads((out / "reports/train/metrics.json").read_text())
            run_id = json.loads((out / "models/run.json").read_text())["run_id"]
            tags = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db").get_run(run_id).data.tags
            row = (f"{seed:8d}", f"{svm:8.4f}", f"{lr:8.4f}", f"{acc:8.4f}", f"{trained['epochs_run']:8d}")
            print(
                "  " + " ".join(row), f"{tags.get('imgclf.augment', 'as set'):>8s} {time.perf_counter() - start:8.0f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    parser.add_argument("--skip", nargs="*", default=[], choices=["classical", "hand", "project"])
    parser.add_argument("--folder", action="store_true", help="DIGITS' lab on a folder instead (default seeds 0 1 2)")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for the folder lab's stages")
    args = parser.parse_args()
    if args.folder:
        print(f"torch {torch.__version__}, {os.cpu_count()} cores")
        return folder_lab(args.seeds if "--seeds" in sys.argv else [0, 1, 2], args.set)
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
