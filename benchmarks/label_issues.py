"""Mislabelled images found, side by side: the digits with 2%, 5% and 10% of labels flipped at random (seeded), and
for each rate the recall and precision of the flagged images, and the time, of

- embeddings: the label_issues stage (cross-validated heads on the trained network's embeddings; cleanlab);
- k-fold: k networks, each trained on the other folds, their out-of-fold probabilities; cleanlab;
- baseline: the classical method, an RBF SVM on the 8x8 gray pixels, 5-fold out-of-fold probabilities; cleanlab.

Then, at 5%: the stage's suggestions accepted (relabel/digits.csv), split and train again, and test/acc on the
true labels of the model trained on the fixed labels against the one trained on the noisy labels.

The noise is written the way a user fixes labels, as relabel/digits.csv rows, so split applies it. Every network is
timm's test_resnet at 32 px, or with --network default the pipeline's own (AlexNet at 64 px, ~10x slower on a
CPU); trainer.epochs=auto.

    python benchmarks/label_issues.py [--data data] [--rates 0.02 0.05 0.10] [--folds 5] [--network tiny|default]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = {"tiny": ["model=timm", "model.name=test_resnet", "model.image_size=32"], "default": []}
NETWORK: list[str] = []  # the --network chosen: every stage and fold trains it


def stage(name: str, *overrides: str) -> float:
    """Run a stage's function in this process on the project in cwd; returns its wall seconds."""
    import importlib

    from imgclf.config import compose

    cfg = compose([*NETWORK, "tracking.uri=sqlite:///mlflow.db", "tracking.experiment=bench", *overrides], root=ROOT)
    started = time.monotonic()
    getattr(importlib.import_module(f"imgclf.stages.{name}"), name)(cfg)
    return time.monotonic() - started


def project(work: Path, images: Path, fixes: dict[str, str]) -> Path:
    """A project whose data/digits/images is the real one and whose relabel/digits.csv holds `fixes`."""
    from imgclf.data.relabel import write_fixes

    work.mkdir(parents=True)
    (work / "data" / "digits").mkdir(parents=True)
    (work / "data" / "digits" / "images").symlink_to(images.resolve())
    write_fixes(work / "relabel" / "digits.csv", fixes)
    return work


def flipped(rows: list[tuple[str, str]], classes: list[str], rate: float, seed: int) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(rows), int(round(rate * len(rows))), replace=False)
    return {rows[i][0]: str(rng.choice([c for c in classes if c != rows[i][1]])) for i in sorted(chosen)}


def scores(found: set[str], truth: set[str]) -> dict[str, float]:
    hit = len(found & truth)
    return {"found": len(found), "recall": hit / len(truth), "precision": hit / max(1, len(found))}


def cleanlab_found(paths: list[str], labels: np.ndarray, probs: np.ndarray) -> set[str]:
    from cleanlab.filter import find_label_issues

    return {paths[i] for i in np.flatnonzero(find_label_issues(labels, probs, n_jobs=1))}


def noisy_rows(split_dir: Path) -> list[tuple[str, str]]:
    from imgclf.data.split import read_index

    return [row for name in ("train", "val", "test") for row in read_index(split_dir / f"{name}.csv")]


def baseline(images: Path, rows: list[tuple[str, str]], classes: list[str]) -> tuple[set[str], float]:
    from PIL import Image
    from sklearn.model_selection import cross_val_predict
    from sklearn.svm import SVC

    started = time.monotonic()
    x = np.stack(
        [np.asarray(Image.open(images / p).convert("L").resize((8, 8)), np.float32).ravel() / 255 for p, _ in rows]
    )
    y = np.array([classes.index(label) for _, label in rows])
    probs = cross_val_predict(SVC(probability=True, random_state=0), x, y, cv=5, method="predict_proba")
    return cleanlab_found([p for p, _ in rows], y, probs), time.monotonic() - started


def kfold(work: Path, images: Path, rows: list[tuple[str, str]], classes: list[str], folds: int) -> tuple[set, float]:
    """k networks, each trained on the other folds (its val and test: the held fold), scoring the held fold."""
    import torch
    from sklearn.model_selection import StratifiedKFold

    from imgclf.contract import ServingSpec, softmax
    from imgclf.data.datasets import build_loader, load_split
    from imgclf.data.split import read_manifest, write_split
    from imgclf.data.transforms import Preprocess
    from imgclf.inference import DeviceSetup, predict
    from imgclf.models.saved import load_checkpoint, model_from_checkpoint

    started = time.monotonic()
    digests = read_manifest(work / "data" / "digits" / "split")
    y = np.array([classes.index(label) for _, label in rows])
    probs = np.zeros((len(rows), len(classes)))
    folds_of = StratifiedKFold(folds, shuffle=True, random_state=0).split(np.zeros(len(y)), y)
    for k, (train, held) in enumerate(folds_of):
        fold = work / f"fold{k}"
        (fold / "data" / "digits").mkdir(parents=True)
        (fold / "data" / "digits" / "images").symlink_to(images.resolve())
        held_rows = sorted(rows[i] for i in held)
        splits = {"train": sorted(rows[i] for i in train), "val": held_rows, "test": held_rows}
        write_split(fold / "data" / "digits" / "split", splits, classes, 5, 0, digests)
        shutil.copy(work / "data" / "digits" / "split" / "report.json", fold / "data" / "digits" / "split")
        os.chdir(fold)
        stage("train")
        ckpt = load_checkpoint(fold / "models" / "model.pt")
        spec = ServingSpec.from_checkpoint(ckpt)
        setup = DeviceSetup.for_device(torch.device("cpu"))
        test = load_split(fold / "data" / "digits", "test", "full", spec)
        logits, _ = predict(
            model_from_checkpoint(ckpt), build_loader(test, 256, False), setup, Preprocess(spec.mean, spec.std)
        )
        order = {p: i for i, p in enumerate(test.paths)}
        probs[held] = softmax(logits).numpy()[[order[rows[i][0]] for i in held]]
    os.chdir(work)
    return cleanlab_found([p for p, _ in rows], y, probs), time.monotonic() - started


def clean_test_acc(work: Path, truth: dict[str, str]) -> float:
    with (work / "reports" / "evaluate" / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return sum(r["predicted"] == truth[r["path"]] for r in rows) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="where make pipeline put data/digits")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.02, 0.05, 0.10])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--network", choices=sorted(NETWORKS), default="tiny", help="default: the pipeline's AlexNet")
    args = parser.parse_args()
    NETWORK[:] = NETWORKS[args.network]
    images = (args.data / "digits" / "images").resolve()
    if not (args.data / "digits" / "split" / "train.csv").is_file():
        sys.exit(f"error: no digits split under {args.data}: run make pipeline first")
    from imgclf.data.split import read_labels
    from imgclf.label_issues import read_issues

    classes = read_labels(args.data / "digits" / "split" / "labels.txt")
    clean = noisy_rows(args.data / "digits" / "split")
    truth = dict(clean)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="imgclf-label-issues-") as tmp:
        for rate in args.rates:
            flips = flipped(clean, classes, rate, seed=int(rate * 1000))
            work = project(Path(tmp) / f"r{rate}", images, flips)
            os.chdir(work)
            stage("split")
            train_s = stage("train")
            stage("evaluate")
            noisy_acc = clean_test_acc(work, truth)
            stage_s = stage("label_issues")
            issues = read_issues(work / "reports" / "label_issues" / "label_issues.csv")
            rows = noisy_rows(work / "data" / "digits" / "split")
            kfold_found, kfold_s = kfold(work, images, rows, classes, args.folds)
            baseline_found, baseline_s = baseline(images, rows, classes)
            wrong = set(flips)
            results[f"{rate:.0%}"] = {
                "flipped": len(wrong),
                "embeddings": {**scores({r["path"] for r in issues}, wrong), "s": round(stage_s, 1)},
                "kfold": {**scores(kfold_found, wrong), "s": round(kfold_s, 1)},
                "baseline": {**scores(baseline_found, wrong), "s": round(baseline_s, 1)},
                "train_s": round(train_s, 1),
            }
            if abs(rate - 0.05) < 1e-9:  # accept every suggestion, as a user would in the Review page
                from imgclf.data.relabel import write_fixes

                write_fixes(work / "relabel" / "digits.csv", {r["path"]: r["suggested_label"] for r in issues})
                stage("split")
                stage("train")
                stage("evaluate")
                results[f"{rate:.0%}"]["clean test/acc"] = {
                    "noisy labels": noisy_acc,
                    "fixed": clean_test_acc(work, truth),
                }
            os.chdir(ROOT)
            print(json.dumps({f"{rate:.0%}": results[f"{rate:.0%}"]}), flush=True)
    print(f"machine: {os.uname().machine}, {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d')}")
    for rate, r in results.items():
        for method in ("embeddings", "kfold", "baseline"):
            m = r[method]
            counts = f"flagged {m['found']}, flipped {r['flipped']}"
            print(
                f"{rate:>4} {method:11} recall {m['recall']:.2f} precision {m['precision']:.2f} ({counts}) {m['s']} s"
            )
        if "clean test/acc" in r:
            print(
                f"{rate:>4} clean test/acc: noisy labels {r['clean test/acc']['noisy labels']:.4f}, fixed "
                f"{r['clean test/acc']['fixed']:.4f}"
            )


if __name__ == "__main__":
    main()
