"""Every PNG figure for people: curves (DIGITS' graph), confusion matrices, image grids, the data report."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from imgclf.files import atomic_path

# A figure's size follows its class count up to a cap, and at most this many classes are named along an axis (every
# k-th past it): drawn at 0.45 inch a class, 300 classes took 45 s and 4 GB a matrix, 1,000 would not fit in memory.
MAX_FIGURE_INCHES = 30.0
MAX_CLASS_LABELS = 128


def pyplot():
    # imported on first use: matplotlib adds ~0.5 s to every stage that only might plot
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def class_ticks(class_names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Where an axis names its classes: each of them, or every k-th so that at most MAX_CLASS_LABELS are named."""
    step = -(-len(class_names) // MAX_CLASS_LABELS) or 1
    ticks = np.arange(0, len(class_names), step)
    return ticks, [class_names[i] for i in ticks]


def save_figure(fig, path: Path) -> None:
    """Write `fig` as PNG atomically and close it."""
    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_curves(history: Sequence[dict], path: str | Path) -> None:
    """Loss and accuracy per epoch, train against val."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = pyplot().subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [h[f"{split}/loss"] for h in history], marker="o", label=f"{split}/loss")
        ax_acc.plot(epochs, [h[f"{split}/acc"] for h in history], marker="o", label=f"{split}/acc")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.01))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, Path(path))


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: str | Path, normalize: bool = False) -> None:
    """Confusion matrix, rows are true classes: counts, or with `normalize` each row as shares of its class."""
    total = int(matrix.sum())
    if normalize:
        matrix = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    n = len(class_names)
    size = min(MAX_FIGURE_INCHES, max(4.0, 0.45 * n + 2))
    fig, ax = pyplot().subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ticks, names = class_ticks(class_names)
    ax.set_xticks(ticks, names, rotation=90 if n > 10 else 0)
    ax.set_yticks(ticks, names)
    kind = "row-normalised confusion" if normalize else "confusion matrix"
    ax.set(xlabel="predicted", ylabel="true", title=f"{kind} ({total} images)")
    if n <= 30:  # past that, numbers are unreadable
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    f"{matrix[i, j]:.2f}" if normalize else int(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if matrix[i, j] > threshold else "black",
                )
    save_figure(fig, Path(path))


def plot_image_grid(
    images: np.ndarray, captions: Sequence[str], title: str, path: str | Path, cols: int = 5, tile: int = 128
) -> None:
    """uint8 images (N, 3, H, W) in a captioned grid, drawn with PIL (matplotlib takes seconds for 20 panels)."""
    from PIL import Image, ImageDraw

    caption_h, title_h = 28, 22
    rows = max(1, (len(images) + cols - 1) // cols)
    canvas = Image.new("RGB", (cols * tile, title_h + rows * (tile + caption_h)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title if len(images) else f"{title}: none", fill="black")
    for k, (image, caption) in enumerate(zip(images, captions)):
        x, y = (k % cols) * tile, title_h + (k // cols) * (tile + caption_h)
        thumb = Image.fromarray(image.transpose(1, 2, 0)).resize((tile - 8, tile - 8), Image.Resampling.NEAREST)
        canvas.paste(thumb, (x + 4, y + 4))
        draw.multiline_text((x + 4, y + tile - 2), caption, fill="black", spacing=1)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def plot_class_counts(rows: list[dict], path: str | Path) -> None:
    """Grouped bars: images per class, one colour per split."""
    plt = pyplot()
    classes = list(dict.fromkeys(r["class"] for r in rows))
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(min(MAX_FIGURE_INCHES, max(6.0, 0.35 * len(classes) + 2)), 4))
    splits = list(dict.fromkeys(r["split"] for r in rows))
    width = 0.8 / len(splits)
    for k, split in enumerate(splits):
        counts = [r["images"] for r in rows if r["split"] == split]
        ax.bar(x + k * width, counts, width, label=split)
    ticks, names = class_ticks(classes)
    ax.set_xticks(ticks + width, names, rotation=90 if len(classes) > 12 else 0)
    ax.set(ylabel="images", title="images per class per split")
    ax.legend()
    save_figure(fig, Path(path))


def plot_samples(
    image_root: Path,
    items: list[tuple[str, str]],
    class_names: Sequence[str],
    path: str | Path,
    load: Callable[[Path], object],
    *,
    per_class: int = 8,
    max_classes: int = 20,
) -> None:
    """A grid: one row per class (first `max_classes`), `per_class` training images each, as `load` gives them (a
    thumbnail: a grid of full-size photos would hold hundreds of MB)."""
    plt = pyplot()
    shown = list(class_names)[:max_classes]
    by_class: dict[str, list[str]] = defaultdict(list)
    for p, label in items:
        if label in shown and len(by_class[label]) < per_class:
            by_class[label].append(p)
    fig, axes = plt.subplots(len(shown), per_class, figsize=(per_class * 1.1, len(shown) * 1.1), squeeze=False)
    for r, label in enumerate(shown):
        for c in range(per_class):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(by_class[label]):
                ax.imshow(load(image_root / by_class[label][c]))
        axes[r][0].set_title(label, fontsize=8, loc="left")
    save_figure(fig, Path(path))


def lr_find_view(
    lrs: Sequence[float], losses: Sequence[float], skip_end: int = 5
) -> tuple[list[float], list[float], tuple[float, float]]:
    """What the LR finder plot shows, as fast.ai's does: the finite points without the last `skip_end` (the loss
    exploding as the rate diverges), and a y-range from just under the lowest loss to the start of the descent or 4
    times the lowest (where the finder stops), whichever is higher, so one exploding point cannot flatten the curve."""
    points = [(lr, loss) for lr, loss in zip(lrs, losses) if np.isfinite(loss)]
    if skip_end and len(points) > 2 * skip_end:
        points = points[:-skip_end]
    if not points:
        return [], [], (0.0, 1.0)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    low, high = min(ys), max(ys)
    descent = max(ys[: ys.index(low) + 1])
    top = min(high, max(descent, 4 * low))
    margin = 0.05 * (top - low) or 0.05 * abs(low) or 0.05
    return xs, ys, (low - margin, top + margin)


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], suggestion: float, path: str | Path) -> None:
    """fast.ai's LR finder plot: smoothed loss against the learning rate (log scale), the suggested rate marked."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    xs, ys, ylim = lr_find_view(lrs, losses)
    ax.plot(xs, ys)
    ax.set_ylim(*ylim)
    ax.set_xscale("log")
    if np.isfinite(suggestion):
        ax.axvline(suggestion, color="red", linestyle="--", label=f"suggested lr {suggestion:.2g}")
        ax.legend()
    ax.set(xlabel="learning rate (head)", ylabel="smoothed training loss", title="learning-rate finder")
    ax.grid(alpha=0.3)
    save_figure(fig, Path(path))
