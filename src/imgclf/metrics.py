"""Classification metrics with the keys used everywhere: test/acc, test/macro_f1, ..."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, precision_recall_fscore_support


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                           prefix: str = "test") -> dict[str, float]:
    """Accuracy, macro-F1, log loss and per-class precision/recall/F1 for predicted probabilities."""
    labels = np.arange(len(class_names))
    y_pred = probs.argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    metrics = {
        f"{prefix}/acc": float(accuracy_score(y_true, y_pred)),
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
    return confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))
