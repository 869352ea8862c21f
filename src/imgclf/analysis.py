"""Evaluation on the test set: metrics (the keys everywhere: test/acc, test/macro_f1, ...), the confusion
matrix, and fast.ai lesson 1's views of the mistakes; `write_evaluation` writes everything reports/evaluate holds."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf.files import atomic_path, write_json
from imgclf.plots import plot_confusion, plot_image_grid


@dataclass
class Predictions:
    """The model's output on a split, one row per image: what metrics, plots and the error analysis read."""

    paths: list[str]
    images: np.ndarray  # uint8 (N, 3, H, W) as the model saw them (for the image grids), or a lazy view of a pack
    y_true: np.ndarray  # class indices
    probs: np.ndarray  # (N, C) softmax probabilities
    class_names: list[str]
    tta_probs: np.ndarray | None = None  # (N, C) averaged over the test-time views, reported beside the plain ones

    @property
    def y_pred(self) -> np.ndarray:
        return self.probs.argmax(1)


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], prefix: str = "test"
) -> dict[str, float]:
    """Accuracy, balanced accuracy (the mean of the per-class recalls, over the classes present), macro-F1, log loss
    and per-class precision/recall/F1 for predicted probabilities."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        f1_score,
        log_loss,
        precision_recall_fscore_support,
    )

    labels = np.arange(len(class_names))
    y_pred = probs.argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    metrics = {
        f"{prefix}/acc": float(accuracy_score(y_true, y_pred)),
        f"{prefix}/balanced_acc": float(balanced_accuracy_score(y_true, y_pred)),
        f"{prefix}/macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        f"{prefix}/loss": float(log_loss(y_true, probs, labels=labels)),
    }
    for i, name in enumerate(class_names):
        metrics[f"{prefix}/precision/{name}"] = float(precision[i])
        metrics[f"{prefix}/recall/{name}"] = float(recall[i])
        metrics[f"{prefix}/f1/{name}"] = float(f1[i])
        metrics[f"{prefix}/support/{name}"] = int(support[i])
    return metrics


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    cells = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(cells, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_image_loss(probs: np.ndarray, y_true: np.ndarray) -> np.ndarray:
    """Cross-entropy of each image: -log p(true class)."""
    return -np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, 1.0))


def top_losses(probs: np.ndarray, y_true: np.ndarray, n: int) -> np.ndarray:
    """Indices of the `n` images with the highest loss, highest first (fast.ai's plot_top_losses)."""
    return np.argsort(-per_image_loss(probs, y_true), kind="stable")[:n]


def most_uncertain(probs: np.ndarray, n: int) -> np.ndarray:
    """Indices of the images whose top probability is lowest (p near 0.5 for two classes)."""
    return np.argsort(probs.max(1), kind="stable")[:n]


def confident_mistakes(probs: np.ndarray, y_true: np.ndarray, n: int) -> np.ndarray:
    """Wrong predictions, the most confident first."""
    wrong = np.flatnonzero(probs.argmax(1) != y_true)
    return wrong[np.argsort(-probs[wrong].max(1), kind="stable")][:n]


def random_correct(probs: np.ndarray, y_true: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """A few correctly classified images of each class, picked at random (reproducibly)."""
    rng = np.random.default_rng(seed)
    correct = probs.argmax(1) == y_true
    picks = [rng.permutation(np.flatnonzero(correct & (y_true == c)))[:per_class] for c in np.unique(y_true)]
    return np.concatenate(picks) if picks else np.array([], dtype=int)


def most_confused(matrix: np.ndarray, class_names: Sequence[str], n: int = 10) -> list[dict]:
    """Off-diagonal cells of the confusion matrix, largest first: (true, predicted, count)."""
    rows, cols = np.nonzero(matrix)  # row-major: ties keep the order of (true, predicted)
    off = rows != cols
    rows, cols = rows[off], cols[off]
    first = np.argsort(-matrix[rows, cols], kind="stable")[:n]
    return [
        {"true": class_names[i], "predicted": class_names[j], "count": int(matrix[i, j])}
        for i, j in zip(rows[first], cols[first])
    ]


def top_k_accuracy(probs: np.ndarray, y_true: np.ndarray, k: int) -> float:
    """Share of images whose true class is among the k most probable; k is capped at the class count."""
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1)[:, :k]
    return float((top == y_true[:, None]).any(1).mean())


def write_evaluation(out_dir: str | Path, preds: Predictions) -> dict[str, float]:
    """metrics.json, predictions.csv, both confusion matrices, the mistakes' image grids and analysis.json."""
    out_dir = Path(out_dir)
    metrics = classification_metrics(preds.y_true, preds.probs, preds.class_names, prefix="test")
    metrics["test/top5_acc"] = top_k_accuracy(preds.probs, preds.y_true, 5)  # k capped at the class count
    if preds.tta_probs is not None:  # the headline figures with test-time augmentation, beside the plain ones
        tta = classification_metrics(preds.y_true, preds.tta_probs, preds.class_names, prefix="test_tta")
        metrics.update({k: tta[k] for k in ("test_tta/acc", "test_tta/macro_f1", "test_tta/loss")})
    matrix = confusion(preds.y_true, preds.y_pred, len(preds.class_names))
    write_json(out_dir / "metrics.json", metrics)
    write_predictions(out_dir / "predictions.csv", preds)
    plot_confusion(matrix, preds.class_names, out_dir / "confusion_matrix.png")
    plot_confusion(matrix, preds.class_names, out_dir / "confusion_normalized.png", normalize=True)
    write_json(out_dir / "analysis.json", write_error_analysis(out_dir, preds, matrix))
    return metrics


def write_predictions(path: Path, preds: Predictions) -> None:
    """Every image: path, true and predicted class (the `actual`/`predicted` DVC's confusion template reads), probs,
    and with test-time augmentation its averaged probabilities (`tta_<class>`)."""
    names = preds.class_names
    tta = preds.tta_probs if preds.tta_probs is not None else [None] * len(preds.paths)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        extra = [f"tta_{c}" for c in names] if preds.tta_probs is not None else []
        writer.writerow(["path", "actual", "predicted", *(f"p_{c}" for c in names), *extra])
        for path_, t, p, row, tta_row in zip(preds.paths, preds.y_true, preds.y_pred, preds.probs, tta):
            averaged = [f"{v:.6f}" for v in tta_row] if tta_row is not None else []
            writer.writerow([path_, names[t], names[p], *(f"{v:.6f}" for v in row), *averaged])


def write_error_analysis(
    out_dir: Path, preds: Predictions, matrix: np.ndarray, n: int = 20, per_class: int = 3
) -> dict:
    """The four views of fast.ai lesson 1 as PNGs, plus the most confused pairs; returns analysis.json's content."""
    names, probs, y_true, y_pred = preds.class_names, preds.probs, preds.y_true, preds.y_pred
    losses = per_image_loss(probs, y_true)

    def caption(i: int) -> str:
        return f"{names[y_true[i]]} -> {names[y_pred[i]]}\np={probs[i, y_pred[i]]:.2f} loss={losses[i]:.2f}"

    views = {
        "top_losses": top_losses(probs, y_true, n),
        "most_uncertain": most_uncertain(probs, n),
        "confident_mistakes": confident_mistakes(probs, y_true, n),
        "random_correct": random_correct(probs, y_true, per_class),
    }
    for name, idx in views.items():
        plot_image_grid(
            preds.images[idx],
            [caption(i) for i in idx],
            f"{name.replace('_', ' ')}: true -> predicted",
            out_dir / f"{name}.png",
        )
    return {
        "confusion_matrix": {"labels": list(names), "counts": matrix.tolist()},  # rows: true class
        "most_confused": most_confused(matrix, names),
        **{
            name: [
                {
                    "path": preds.paths[i],
                    "true": names[y_true[i]],
                    "predicted": names[y_pred[i]],
                    "probability": round(float(probs[i, y_pred[i]]), 6),
                    "loss": round(float(losses[i]), 6),
                }
                for i in idx
            ]
            for name, idx in views.items()
        },
    }
