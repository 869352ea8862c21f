"""evaluate: test-set metrics, predictions and the confusion matrix, logged into the train run."""
from __future__ import annotations

import csv
import logging

import numpy as np
import torch
from omegaconf import DictConfig

from .. import tracking
from ..analysis import top_k_accuracy, write_error_analysis
from ..data import DATA_ROOT, SPLIT_DIR, dataset_dir
from ..data.datasets import build_loader, load_split
from ..data.split import read_labels
from ..engine import DeviceSetup, Preprocess, predict
from ..metrics import classification_metrics, confusion
from ..models import load_checkpoint, model_from_checkpoint
from ..plots import plot_confusion
from ..utils import atomic_path, resolve_device, write_json
from ._app import read_run_file, stage_main

log = logging.getLogger(__name__)

OUT = "reports/evaluate"


def evaluate(cfg: DictConfig) -> float:
    ckpt = load_checkpoint("models/model.pt")
    class_names = ckpt["class_names"]
    labels_file = dataset_dir(DATA_ROOT, cfg.data.name) / SPLIT_DIR / "labels.txt"
    if read_labels(labels_file) != class_names:
        raise ValueError(f"models/model.pt was trained on other classes than {labels_file}; rerun train (dvc repro)")
    setup = DeviceSetup.for_device(resolve_device(cfg.trainer.device))
    model = model_from_checkpoint(ckpt).to(setup.device)
    test_set = load_split(DATA_ROOT, cfg.data.name, "test", cfg.data.subset, ckpt["image_size"],
                          ckpt.get("interpolation", "bilinear"))
    loader = build_loader(test_set, cfg.trainer.batch_size, shuffle=False)
    logits, y_true = predict(model, loader, setup, Preprocess(ckpt["mean"], ckpt["std"]).to(setup.device))
    probs = torch.softmax(logits, 1).numpy()
    y_true = y_true.numpy()
    metrics = classification_metrics(y_true, probs, class_names, prefix="test")
    metrics["test/top5_acc"] = top_k_accuracy(probs, y_true, 5)  # k capped at the class count
    matrix = confusion(y_true, probs.argmax(1), len(class_names))
    write_outputs(test_set.paths, y_true, probs, class_names, metrics, matrix)
    analysis = write_error_analysis(OUT, test_set.images.numpy(), test_set.paths, probs, y_true, class_names, matrix)
    write_json(f"{OUT}/analysis.json", analysis)
    with tracking.run(cfg.tracking.uri, run_id=read_run_file()["run_id"]):
        tracking.log_metrics(metrics)
        tracking.log_artifacts(OUT, "evaluate")
    log.info("test/acc %.4f test/macro_f1 %.4f on %d images", metrics["test/acc"], metrics["test/macro_f1"], len(y_true))
    return metrics["test/acc"]


def write_outputs(paths, y_true: np.ndarray, probs: np.ndarray, class_names, metrics, matrix) -> None:
    out = OUT
    write_json(f"{out}/metrics.json", metrics)
    y_pred = probs.argmax(1)
    # `actual`/`predicted` columns: what DVC's confusion template reads
    with atomic_path(f"{out}/predictions.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "actual", "predicted", *(f"p_{c}" for c in class_names)])
        for path, t, p, row in zip(paths, y_true, y_pred, probs):
            writer.writerow([path, class_names[t], class_names[p], *(f"{v:.6f}" for v in row)])
    plot_confusion(matrix, class_names, f"{out}/confusion_matrix.png")
    plot_confusion(matrix, class_names, f"{out}/confusion_normalized.png", normalize=True)


main = stage_main(evaluate)

if __name__ == "__main__":
    main()
