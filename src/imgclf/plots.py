"""PNG figures for people: training curves (DIGITS' graph) and the confusion matrix."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .utils import atomic_path


def _pyplot():
    # imported on first use: matplotlib adds ~0.5 s to every stage that only might plot
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_curves(history: Sequence[dict], path: str | Path) -> None:
    """Loss and accuracy per epoch, train against val."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = _pyplot().subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [h[f"{split}/loss"] for h in history], marker="o", label=f"{split}/loss")
        ax_acc.plot(epochs, [h[f"{split}/acc"] for h in history], marker="o", label=f"{split}/acc")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.01))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, Path(path))


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: str | Path, normalize: bool = False) -> None:
    """Confusion matrix, rows are true classes: counts, or with `normalize` each row as shares of its class."""
    total = int(matrix.sum())
    if normalize:
        matrix = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    n = len(class_names)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = _pyplot().subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ticks = np.arange(n)
    ax.set_xticks(ticks, class_names, rotation=90 if n > 10 else 0)
    ax.set_yticks(ticks, class_names)
    kind = "row-normalised confusion" if normalize else "confusion matrix"
    ax.set(xlabel="predicted", ylabel="true", title=f"{kind} ({total} images)")
    if n <= 30:  # past that, numbers are unreadable
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{matrix[i, j]:.2f}" if normalize else int(matrix[i, j]), ha="center", va="center",
                        fontsize=8,
                        color="white" if matrix[i, j] > threshold else "black")
    _save(fig, Path(path))
