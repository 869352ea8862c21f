"""Images whose label looks wrong: confident learning (cleanlab) on out-of-fold probabilities.

The probabilities come from cross-validated heads on the trained network's embeddings: the network's input to its
last layer for every labelled image, then a logistic regression per fold, trained on the other folds and predicting
this one, so no image is scored by a head that saw its label. One forward pass and a few seconds of scikit-learn,
against k trainings of the network for k-fold probabilities (benchmarks/label_issues.py measures both). cleanlab
ranks the images whose given label the probabilities contradict, suggests the class they favour, and scores the
data set's label health (the share of labels it trusts).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf.files import atomic_path, write_json
from imgclf.plots import plot_image_grid

log = logging.getLogger(__name__)

COLUMNS = ["rank", "path", "split", "given_label", "suggested_label", "self_confidence", "suggested_prob"]


def out_of_fold_probs(embeddings: np.ndarray, labels: np.ndarray, n_classes: int, folds: int, seed: int) -> np.ndarray:
    """(N, classes) probabilities, each row from a standardised logistic regression that never saw that row."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    smallest = np.bincount(labels, minlength=n_classes)
    asked, folds = folds, int(max(2, min(folds, smallest[smallest > 0].min())))  # each class in each fold's training
    if folds != asked:
        log.warning(
            "label_issues.folds=%d: the smallest class has %d labelled images, so %d folds (a fold per image at most)",
            asked,
            smallest[smallest > 0].min(),
            folds,
        )
    probs = np.zeros((len(labels), n_classes))
    for train, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(embeddings, labels):
        # strongly regularised: embeddings are wide (AlexNet's 4096) and the labels being judged are noisy
        head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.01))
        head.fit(embeddings[train], labels[train])
        probs[np.ix_(held, head.classes_)] = head.predict_proba(embeddings[held])
    return probs


@dataclass
class LabelIssues:
    """cleanlab's verdict on a labelled set: the issues ranked most likely first, and the set's label health."""

    rows: list[dict]
    health: float
    images: int

    @property
    def metrics(self) -> dict[str, float]:
        return {
            "label_issues/count": len(self.rows),
            "label_issues/fraction": len(self.rows) / max(1, self.images),
            "label_issues/health": self.health,
        }


def find_issues(
    labels: np.ndarray, probs: np.ndarray, paths: Sequence[str], splits: Sequence[str], class_names: Sequence[str]
) -> LabelIssues:
    from cleanlab.dataset import overall_label_health_score
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    # n_jobs=1: cleanlab's pool forks this process, whose torch threads can leave a child deadlocked (seen: a
    # stage that never ended); the results are the same with any n_jobs, and one process takes well under a second
    ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    suggested = probs.argmax(1)
    rows = [
        {
            "rank": r,
            "path": paths[i],
            "split": splits[i],
            "given_label": class_names[labels[i]],
            "suggested_label": class_names[suggested[i]],
            "self_confidence": round(float(quality[i]), 6),
            "suggested_prob": round(float(probs[i, suggested[i]]), 6),
        }
        for r, i in enumerate(ranked, start=1)
    ]
    health = float(overall_label_health_score(labels, probs, verbose=False))
    return LabelIssues(rows, health, len(labels))


def write_issues(out_dir: Path, issues: LabelIssues, images_of, top: int) -> None:
    """label_issues.csv (every issue), metrics.json and top_issues.png (the `top` most likely, captioned
    given -> suggested); `images_of(paths)` gives their uint8 (N, 3, H, W) pixels."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "label_issues.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(issues.rows)
    write_json(out_dir / "metrics.json", issues.metrics)
    shown = issues.rows[:top]
    pixels = images_of([r["path"] for r in shown]) if shown else np.zeros((0, 3, 1, 1), np.uint8)
    captions = [f"#{r['rank']} {r['given_label']} -> {r['suggested_label']}\n{r['path'][-18:]}" for r in shown]
    title = f"likely label issues: given -> suggested (health {issues.health:.3f})"
    plot_image_grid(pixels, captions, title, out_dir / "top_issues.png")
