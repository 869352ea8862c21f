"""lr-find: fast.ai's learning-rate finder on the configured model and data (not a DVC stage): a sweep over
~100 batches, the loss-against-rate plot with a suggested rate, one MLflow run; nothing is trained for keeps."""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import replace

from omegaconf import DictConfig

from imgclf import tracking
from imgclf.devices import resolve_device
from imgclf.files import atomic_files, write_json
from imgclf.models.build import set_backbone_trainable
from imgclf.options import Options
from imgclf.paths import Paths
from imgclf.plots import plot_lr_find
from imgclf.stages._app import output_root, stage_main
from imgclf.stages._build import build_training
from imgclf.training.finetune import Strategy
from imgclf.training.lr_find import lr_find

log = logging.getLogger(__name__)


def find_lr(cfg: DictConfig | Options) -> float:
    opts = (cfg if isinstance(cfg, Options) else Options.from_config(cfg)).check_targets()
    paths, f = Paths.from_config(opts.paths, output_root()), opts.lr_find
    built = build_training(opts, paths, resolve_device(opts.trainer.device))
    trainer, ft = built.trainer, opts.finetune
    if Strategy(ft.strategy, ft.freeze_epochs).frozen_for() >= 1:  # head or gradual: the rate of the first epochs
        set_backbone_trainable(built.model, False)
        trainer = replace(trainer, frozen_backbone=True)
    result = lr_find(trainer, built.train_loader, start_lr=f.start_lr, end_lr=f.end_lr, num_batches=f.num_batches)
    out = paths.report_dir("lr_find")
    figures = {"lr_find/suggested_lr": result.suggestion, "lr_find/min_loss_lr_over_10": result.minimum_over_10}
    names, figures = list(figures), {k: v for k, v in figures.items() if math.isfinite(v)}  # null: it diverged at once
    with atomic_files(out) as tmp:  # the three together: a run stopped half-way left a new CSV beside the old plot
        with (tmp / "lr_find.csv").open("w", newline="") as file:
            csv.writer(file).writerows([("lr", "loss"), *zip(result.lrs, result.losses)])
        plot_lr_find(result.lrs, result.losses, result.suggestion, tmp / "lr_find.png")
        write_json(tmp / "suggestion.json", {**dict.fromkeys(names, None), **figures, "batches": len(result.lrs)})
    tags = {"imgclf.role": "lr-find", "imgclf.dataset": opts.data.name, "imgclf.model": opts.model.name}
    name = f"lr-find-{opts.model.name}-{opts.data.name}"
    tracking.use(opts.tracking.outbox, opts.tracking.outage_wait_s)
    with tracking.run(opts.tracking.uri, opts.tracking.experiment, run_name=name, tags=tags):
        tracking.log_config(opts.config)
        tracking.log_metrics(figures)
        tracking.log_artifacts(out, "lr_find")
    if not math.isfinite(result.suggestion):
        print(
            f"no learning rate could be suggested: the loss diverged after {len(result.lrs)} batches (a suggestion "
            f"needs 3); lower lr_find.end_lr or lr_find.start_lr; plot: {out / 'lr_find.png'}"
        )
        return result.suggestion
    log.info(
        "suggested learning rate %.3g (steepest fall of the loss); plot: %s", result.suggestion, out / "lr_find.png"
    )
    print(
        f"suggested optim.lr={result.suggestion:.3g}: the steepest fall of the loss "
        f"(a tenth of the lowest-loss rate: {result.minimum_over_10:.3g}); plot: {out / 'lr_find.png'}"
    )
    return result.suggestion


main = stage_main(find_lr)

if __name__ == "__main__":
    main()
