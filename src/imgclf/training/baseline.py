"""What the split could give with no network: logistic regression on small grayscale pixels, fitted on (a sample
of) the train split and scored on the val split, so a training that ends near chance or far below it says so."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SIDE = 16  # px: enough for digits, letters and coarse shapes; 256 features keep the fit to seconds
LIMIT = 2000  # images of each split at most: the check stays cheap on large data sets


def pixels(dataset, limit: int = LIMIT, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, SIDE*SIDE) grayscale pixels in [0, 1] and labels of a seeded sample of `dataset` (a split)."""
    n = len(dataset)
    chosen = np.sort(np.random.default_rng(seed).choice(n, size=min(n, limit), replace=False))
    x = []
    for start in range(0, len(chosen), 256):
        images = dataset.batch(chosen[start : start + 256].tolist()).float().mean(1, keepdim=True) / 255
        x.append(F.interpolate(images, size=(SIDE, SIDE), mode="area").flatten(1).numpy())
    return np.concatenate(x), dataset.labels[torch.as_tensor(chosen)].numpy()


def pixel_baseline(train, val) -> float:
    """val accuracy of logistic regression on SIDE px grayscale pixels, trained on the train split."""
    from sklearn.linear_model import LogisticRegression

    x, y = pixels(train)
    xv, yv = pixels(val)
    if len(np.unique(y)) < 2 or not len(yv):
        return float("nan")
    return float((LogisticRegression(max_iter=1000).fit(x, y).predict(xv) == yv).mean())


def verdict(val_acc: float, baseline: float, classes: int) -> str | None:
    """One line when val/acc is near chance or well below the pixel baseline, with what to try; else None."""
    chance = 1 / classes
    tries = "try more steps (trainer.epochs=30 or trainer.min_steps=1000), imgclf lr-find, or another augment preset"
    if val_acc < chance + 0.1 * (1 - chance):
        return f"val/acc {val_acc:.4f} is near chance ({chance:.3f} for {classes} classes): {tries}"
    if np.isfinite(baseline) and val_acc < baseline - 0.05:
        return (
            f"val/acc {val_acc:.4f} is well below logistic regression on {SIDE} px grayscale pixels of the same split "
            f"({baseline:.4f}): {tries}"
        )
    return None
