"""What the split could give with no network: logistic regression on small grayscale pixels, fitted on (a sample
of) the train split and scored on the val split, so a training that ends near chance or far below it says so.

The score is kept in the user's cache under a digest of the pixels and labels themselves, the fit's settings and
scikit-learn's version: the runs of a sweep, and every rerun on the same split, read it instead of fitting again (and
of importing scikit-learn, a second of each training process). Any change to the images, the split or the settings is
another digest."""

from __future__ import annotations

import hashlib
import json
import logging
from importlib.metadata import version

import numpy as np
import torch
import torch.nn.functional as F

from imgclf.errors import BadInput
from imgclf.files import open_regular, write_json
from imgclf.paths import user_cache

SIDE = 16  # px: enough for digits, letters and coarse shapes; 256 features keep the fit to seconds
LIMIT = 2000  # images of each split at most: the check stays cheap on large data sets
FIT = {"max_iter": 1000}  # LogisticRegression's settings

log = logging.getLogger(__name__)


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
    """val accuracy of logistic regression on SIDE px grayscale pixels, trained on the train split (kept by content
    in the user's cache: see the module's docstring)."""
    x, y = pixels(train)
    xv, yv = pixels(val)
    if len(np.unique(y)) < 2 or not len(yv):
        return float("nan")
    kept = user_cache("baseline", f"{_digest(x, y, xv, yv)}.json")
    try:  # a regular file only: a pipe there would block the run
        with open_regular(kept) as f:
            return float(json.loads(f.read())["val/acc"])
    except (OSError, ValueError, KeyError, TypeError):  # not kept yet, or unreadable: fitted again
        pass
    from sklearn.linear_model import LogisticRegression

    score = float((LogisticRegression(**FIT).fit(x, y).predict(xv) == yv).mean())
    try:
        write_json(kept, {"val/acc": score})
    except (OSError, BadInput) as exc:  # a full or read-only cache costs the next run a fit, never this run its result
        log.warning("pixel baseline not kept in %s: %s", kept.parent, exc)
    return score


def _digest(*arrays: np.ndarray) -> str:
    """sha256 of the arrays (shape, type, bytes), the side, the fit's settings and scikit-learn's version."""
    h = hashlib.sha256(json.dumps([SIDE, FIT, version("scikit-learn")]).encode())
    for a in arrays:
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


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
