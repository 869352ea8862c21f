"""evaluate: test-set metrics, predictions, the confusion matrix and the mistakes, logged into the train run."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from .. import tracking
from ..data.datasets import build_loader, load_split
from ..data.split import read_labels
from ..engine import DeviceSetup, Preprocess, predict
from ..errors import BadInput
from ..evaluation import Predictions, write_evaluation
from ..lifecycle import TrainingRun
from ..models import load_checkpoint, model_from_checkpoint
from ..paths import Paths
from ..serving import ServingSpec, softmax
from ..utils import resolve_device
from ._app import stage_main

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> float:
    paths = Paths.from_config(cfg.paths)
    ckpt = load_checkpoint(paths.model_file)
    spec = ServingSpec.from_checkpoint(ckpt)
    if read_labels(paths.labels(cfg.data.name)) != spec.class_names:
        raise BadInput(
            f"{paths.model_file} was trained on other classes than {paths.labels(cfg.data.name)}; "
            "rerun train (dvc repro)"
        )
    setup = DeviceSetup.for_device(resolve_device(cfg.trainer.device))
    model = model_from_checkpoint(ckpt).to(setup.device)
    test_set = load_split(paths.dataset(cfg.data.name), "test", cfg.data.subset, spec.image_size, spec.interpolation)
    loader = build_loader(test_set, cfg.trainer.batch_size, shuffle=False)
    logits, y_true = predict(model, loader, setup, Preprocess(spec.mean, spec.std).to(setup.device))
    preds = Predictions(
        test_set.paths, test_set.images.numpy(), y_true.numpy(), softmax(logits).numpy(), spec.class_names
    )
    out = paths.report_dir("evaluate")
    metrics = write_evaluation(out, preds)
    with TrainingRun.reopen(paths, cfg.tracking.uri):
        tracking.log_metrics(metrics)
        tracking.log_artifacts(out, "evaluate")
    log.info(
        "test/acc %.4f test/macro_f1 %.4f on %d images",
        metrics["test/acc"],
        metrics["test/macro_f1"],
        len(preds.y_true),
    )
    return metrics["test/acc"]


main = stage_main(evaluate)

if __name__ == "__main__":
    main()
