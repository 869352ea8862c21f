"""train: fine-tune the configured network on the split, one MLflow run per call; returns the kept val/acc."""

from __future__ import annotations

from dataclasses import asdict

import torch
from omegaconf import DictConfig

from imgclf import tracking
from imgclf.devices import resolve_device
from imgclf.paths import Paths
from imgclf.stages._app import is_multirun, output_root, overrides, stage_main, to_dict
from imgclf.stages._build import build_training
from imgclf.tracking import sweeps
from imgclf.training import distributed as dist
from imgclf.training.checkpoint import Resumable
from imgclf.training.finetune import Strategy, prepare
from imgclf.training.lifecycle import Kept, Stopping, TrainingRun, run_tags


def train(cfg: DictConfig) -> float:
    paths, t, m = Paths.from_config(cfg.paths, output_root()), cfg.trainer, cfg.model
    device = dist.setup(resolve_device(t.device))
    try:
        config = to_dict(cfg)
        run = TrainingRun.plan(paths, str(t.resume), config, dataset=cfg.data.name)
        name = cfg.tracking.run_name or sweeps.run_name(m.name, cfg.data.name, cfg.optim.lr, t.batch_size, overrides())
        sweep_dir = output_root().parent if is_multirun() else None  # jobs of one sweep share its directory as a tag
        labels = {"model": m.name, "finetune": cfg.finetune.strategy}
        tags = run_tags(paths, cfg.data.name, device, overrides(), sweep_dir, weights=m.weights, **labels)
        tracking.use(cfg.tracking)
        with run.open(cfg.tracking.uri, cfg.tracking.experiment, name=name, tags=tags, config=config):
            return _train(cfg, paths, device, run)
    finally:
        dist.teardown()


def _train(cfg: DictConfig, paths: Paths, device: torch.device, run: TrainingRun) -> float:
    t, built = cfg.trainer, build_training(cfg, paths, device)
    trainer, model, generator = built.trainer, built.model, built.generator
    strategy = Strategy(cfg.finetune.strategy, cfg.finetune.freeze_epochs, cfg.finetune.cache_features, t.compile)
    prepared = prepare(
        strategy, trainer, model, built.train_loader, built.val_loader, batch_size=t.batch_size, generator=generator
    )
    augment = trainer.augment
    generators = {"loader": generator, **({"augment": augment.generator} if augment else {})}
    objects = Resumable(model, trainer.optimizer, trainer.scheduler, trainer.scaler, generators)
    state = run.fit(prepared, objects, epochs=t.epochs, stopping=Stopping(**t.early_stopping))
    meta = {"arch": cfg.model.name, "source": cfg.model.source, **asdict(built.spec)}
    data_report_dir = Paths.from_config(cfg.paths).report_dir("split")  # the project's, also from a sweep job
    kept = Kept.choose(t.keep, state)
    run.finish(
        state,
        kept,
        model,
        meta=meta,
        config=to_dict(cfg),
        experiment=cfg.tracking.experiment,
        dataset=cfg.data.name,
        data_report_dir=data_report_dir,
    )
    return kept.metrics["val/acc"]  # the sweep objective: the val/acc of the weights model.pt holds


main = stage_main(train)

if __name__ == "__main__":
    main()
