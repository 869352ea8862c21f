"""train: fine-tune the configured network on the split, one MLflow run per call; returns the kept val/acc."""

from __future__ import annotations

import logging
from dataclasses import asdict

from omegaconf import DictConfig

from imgclf import tracking
from imgclf.devices import resolve_device
from imgclf.options import Options
from imgclf.paths import Paths
from imgclf.stages._app import is_multirun, output_root, overrides, stage_main
from imgclf.stages._build import Training, build_training
from imgclf.tracking import sweeps
from imgclf.training import distributed as dist
from imgclf.training.baseline import pixel_baseline, verdict
from imgclf.training.checkpoint import Resumable
from imgclf.training.finetune import Strategy, prepare
from imgclf.training.lifecycle import Kept, Stopping, TrainingRun, run_tags
from imgclf.training.pruning import trial_pruner

log = logging.getLogger(__name__)


def train(cfg: DictConfig | Options) -> float:
    opts = (cfg if isinstance(cfg, Options) else Options.from_config(cfg)).check_targets()
    paths, t, m, data = Paths.from_config(opts.paths, output_root()), opts.trainer, opts.model, opts.data.name
    device = dist.setup(resolve_device(t.device))
    try:
        sweep_dir = output_root().parent if is_multirun() else None  # jobs of one sweep share its directory as a tag
        tracking.use(opts.tracking.outbox, opts.tracking.outage_wait_s, store=opts.tracking.uri)
        # a network that cannot train is refused before its run opens; a sweep's trial opens first: a FAILED run
        built = None if sweep_dir else build_training(opts, paths, device)
        run = TrainingRun.plan(paths, t.resume, opts.config, dataset=data)  # holds checkpoints/ until the run ends
        name = opts.tracking.run_name or sweeps.run_name(m.name, data, opts.optim.lr, t.batch_size, overrides())
        labels = {"model": m.name, "finetune": opts.finetune.strategy}
        tags = run_tags(paths, data, device, overrides(), sweep_dir, start=opts.config["model"], **labels)
        with run.open(opts.tracking.uri, opts.tracking.experiment, name=name, tags=tags, config=opts.config):
            return _train(opts, paths, run, built or build_training(opts, paths, device))
    finally:
        dist.teardown()


def _train(opts: Options, paths: Paths, run: TrainingRun, built: Training) -> float:
    t, f = opts.trainer, opts.finetune
    trainer, model, generator = built.trainer, built.model, built.generator
    if dist.is_main():  # rank 0 owns the MLflow run
        _say_what_auto_chose(opts, built)
    strategy = Strategy(f.strategy, f.freeze_epochs, f.cache_features, t.compile)
    prepared = prepare(
        strategy, trainer, model, built.train_loader, built.val_loader, batch_size=t.batch_size, generator=generator
    )
    augment = trainer.augment
    generators = {"loader": generator, **({"augment": augment.generator} if augment else {})}
    objects = Resumable(model, trainer.optimizer, trainer.scheduler, trainer.scaler, generators)
    prune = trial_pruner() if dist.world_size() == 1 else None  # one process decides: DDP ranks would disagree
    stopping = Stopping(t.early_stopping.patience, t.early_stopping.min_delta, prune)
    state = run.fit(prepared, objects, epochs=built.epochs, stopping=stopping)
    meta = {"arch": opts.model.name, "source": opts.model.source, **asdict(built.spec)}
    data_report_dir = Paths.from_config(opts.paths).report_dir("split")  # the project's, also from a sweep job
    kept = Kept.choose(t.keep, state)
    run.finish(
        state,
        kept,
        model,
        meta=meta,
        config=opts.config,
        experiment=opts.tracking.experiment,
        dataset=opts.data.name,
        data_report_dir=data_report_dir,
    )
    if dist.is_main():  # a run that ended near chance, or below what raw pixels give, says so and what to try
        floor = pixel_baseline(built.train_loader.dataset, built.val_loader.dataset)
        tracking.log_metrics({"baseline/val/acc": floor})
        said = verdict(kept.metrics["val/acc"], floor, len(built.spec.class_names))
        if said:
            log.warning("%s", said)
    return kept.metrics["val/acc"]  # the sweep objective: the val/acc of the weights model.pt holds


def _say_what_auto_chose(opts: Options, built) -> None:
    """augment=auto and trainer.epochs=auto: what they came to, in the log and the run's tags."""
    tags = {}
    if built.augment:
        log.info("augment=auto: %s, from the split's images (data/%s/split/report.json)", built.augment, opts.data.name)
        tags["imgclf.augment"] = built.augment
    if opts.trainer.epochs == "auto":
        log.info("trainer.epochs=auto: %d epochs of %d steps", built.epochs, len(built.train_loader))
        tags["imgclf.epochs"] = built.epochs
    if tags:
        tracking.set_tags(tags)


main = stage_main(train, refused=sweeps.record_refused_job)

if __name__ == "__main__":
    main()
