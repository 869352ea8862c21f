"""Error analysis (fast.ai lesson 1's views): the images the model gets most wrong, or is least sure of."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


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
    off = [(int(matrix[i, j]), i, j) for i in range(len(matrix)) for j in range(len(matrix)) if i != j and matrix[i, j]]
    off.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [{"true": class_names[i], "predicted": class_names[j], "count": c} for c, i, j in off[:n]]


def top_k_accuracy(probs: np.ndarray, y_true: np.ndarray, k: int) -> float:
    """Share of images whose true class is among the k most probable; k is capped at the class count."""
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1)[:, :k]
    return float((top == y_true[:, None]).any(1).mean())


def plot_image_grid(images: np.ndarray, captions: Sequence[str], title: str, path: str | Path, cols: int = 5,
                    tile: int = 128) -> None:
    """uint8 images (N, 3, H, W) in a captioned grid, drawn with PIL (matplotlib takes seconds for 20 panels)."""
    from PIL import Image, ImageDraw

    from .utils import atomic_path

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


def write_error_analysis(out_dir: str | Path, images: np.ndarray, paths: Sequence[str], probs: np.ndarray,
                         y_true: np.ndarray, class_names: Sequence[str], matrix: np.ndarray, n: int = 20,
                         per_class: int = 3) -> dict:
    """The five views of fast.ai lesson 1 as PNGs, plus the most confused pairs; returns analysis.json's content."""
    out_dir = Path(out_dir)
    y_pred, losses = probs.argmax(1), per_image_loss(probs, y_true)

    def caption(i: int) -> str:
        return f"{class_names[y_true[i]]} -> {class_names[y_pred[i]]}\np={probs[i, y_pred[i]]:.2f} loss={losses[i]:.2f}"

    views = {
        "top_losses": top_losses(probs, y_true, n),
        "most_uncertain": most_uncertain(probs, n),
        "confident_mistakes": confident_mistakes(probs, y_true, n),
        "random_correct": random_correct(probs, y_true, per_class),
    }
    for name, idx in views.items():
        plot_image_grid(images[idx], [caption(i) for i in idx], f"{name.replace('_', ' ')}: true -> predicted",
                        out_dir / f"{name}.png")
    return {
        "confusion_matrix": {"labels": list(class_names), "counts": matrix.tolist()},  # rows: true class
        "most_confused": most_confused(matrix, class_names),
        **{name: [{"path": paths[i], "true": class_names[y_true[i]], "predicted": class_names[y_pred[i]],
                   "probability": round(float(probs[i, y_pred[i]]), 6), "loss": round(float(losses[i]), 6)}
                  for i in idx] for name, idx in views.items()},
    }
