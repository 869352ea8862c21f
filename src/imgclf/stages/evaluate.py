"""evaluate: test-set metrics, predictions, the confusion matrix and the mistakes, logged into the train run."""

from __future__ import annotations

import logging
from functools import partial

import torch
from omegaconf import DictConfig

from imgclf import tracking
from imgclf.analysis import Predictions, top_losses, write_evaluation
from imgclf.contract import ServingSpec, normalize, scaled_stats, softmax
from imgclf.data.datasets import PackImages, build_loader, load_split
from imgclf.data.split import read_labels
from imgclf.data.transforms import Preprocess, tta_views
from imgclf.devices import resolve_device
from imgclf.errors import BadInput
from imgclf.files import atomic_files
from imgclf.inference import DeviceSetup, predict, predict_views
from imgclf.models.explain import grad_cam, overlay
from imgclf.models.saved import load_checkpoint, model_from_checkpoint
from imgclf.options import Options
from imgclf.paths import Paths
from imgclf.plots import plot_image_grid
from imgclf.stages._app import stage_main

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig | Options) -> float:
    opts = cfg if isinstance(cfg, Options) else Options.from_config(cfg)
    paths, data = Paths.from_config(opts.paths), opts.data
    ckpt = load_checkpoint(paths.model_file, opts.config.get("model"))
    spec = ServingSpec.from_checkpoint(ckpt)
    if read_labels(paths.labels(data.name)) != spec.class_names:
        raise BadInput(
            f"{paths.model_file} was trained on other classes than {paths.labels(data.name)}; rerun train (dvc repro)"
        )
    t = opts.trainer
    setup = DeviceSetup.for_device(resolve_device(t.device), t.amp, t.channels_last)  # as train ran: bf16 on CUDA
    model = model_from_checkpoint(ckpt).to(setup.device)
    views = list(opts.evaluate.tta)
    test_set = load_split(paths.dataset(data.name), "test", data.subset, spec, crop=not views)
    loader = build_loader(test_set, opts.trainer.batch_size, shuffle=False)
    preprocess = Preprocess(spec.mean, spec.std).to(setup.device)
    tta_probs = None
    if views:  # one pass: the centre view is the plain prediction, the mean over all views the TTA one
        logits, y_true = predict_views(
            model, loader, setup, preprocess, partial(tta_views, size=spec.image_size, views=views)
        )
        probs, tta_probs = softmax(logits[0]).numpy(), softmax(logits).mean(0).numpy()
        test_set = test_set.with_crop(spec.image_size)
    else:
        logits, y_true = predict(model, loader, setup, preprocess)
        probs = softmax(logits).numpy()
    preds = Predictions(test_set.paths, PackImages(test_set), y_true.numpy(), probs, spec.class_names, tta_probs)
    out = paths.report_dir("evaluate")
    with atomic_files(out) as tmp:  # a failure half-way leaves no new report beside the last run's
        metrics = write_evaluation(tmp, preds)
        worst = top_losses(preds.probs, preds.y_true, 20)  # where the network looked, for the class it gave
        images = preds.images[worst]
        inputs = torch.from_numpy(normalize(images, *scaled_stats(spec.mean, spec.std))).to(setup.device)
        maps = grad_cam(model, inputs, preds.y_pred[worst].tolist())
        captions = [f"{spec.class_names[preds.y_true[i]]} -> {spec.class_names[preds.y_pred[i]]}" for i in worst]
        plot_image_grid(
            overlay(images, maps), captions, "top losses: Grad-CAM of the class given", tmp / "top_losses_cam.png"
        )
    tracking.use(opts.tracking.outbox, opts.tracking.outage_wait_s)
    with tracking.reopen(paths.run_file, opts.tracking.uri):
        tracking.log_metrics(metrics)  # the run's test/* are the last evaluation's; the tag says which config made it
        tracking.set_tags({"imgclf.evaluate.tta": "+".join(views) or "none"})
        tracking.log_artifacts(out, "evaluate")
        tracking.share_artifacts({"checkpoint/model.pt": paths.model_file})  # one file with DVC's cached model.pt
    log.info(
        "test/acc %.4f test/macro_f1 %.4f on %d images", metrics["test/acc"], metrics["test/macro_f1"], len(y_true)
    )
    if views:
        log.info("with test-time augmentation (%s): test_tta/acc %.4f", "+".join(views), metrics["test_tta/acc"])
    return metrics["test/acc"]


main = stage_main(evaluate)

if __name__ == "__main__":
    main()
