"""train: fine-tune the configured network on the split, one MLflow run per call; returns best val/acc."""

from __future__ import annotations

from dataclasses import asdict

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from .. import distributed as dist
from .. import sweeps
from ..checkpoint import Resumable
from ..data.datasets import build_loader, load_split
from ..data.split import read_labels
from ..data.transforms import build_augment
from ..engine import DeviceSetup, Preprocess, Trainer
from ..finetune import Strategy, prepare
from ..lifecycle import Stopping, TrainingRun, run_tags
from ..models import build_model, resolve_preprocessing
from ..optim import build_optimizer
from ..paths import Paths
from ..serving import ServingSpec
from ..utils import resolve_device, seed_everything
from ._app import is_multirun, output_root, overrides, stage_main, to_dict

MODEL_OPTIONS = ("source", "pretrained", "weights", "download", "dropout")  # build_model's keywords in conf/model


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
        with run.open(cfg.tracking.uri, cfg.tracking.experiment, name=name, tags=tags, config=config):
            return _train(cfg, paths, device, run)
    finally:
        dist.teardown()


def _train(cfg: DictConfig, paths: Paths, device: torch.device, run: TrainingRun) -> float:
    t, m, o = cfg.trainer, cfg.model, cfg.optim
    setup = DeviceSetup.for_device(device, t.amp, t.channels_last)
    generator = seed_everything(cfg.seed, t.deterministic)
    pre = resolve_preprocessing(m.source, m.name, m.image_size, m.mean, m.std, m.interpolation)
    spec = ServingSpec(read_labels(paths.labels(cfg.data.name)), pre.image_size, pre.mean, pre.std, pre.interpolation)
    root, pin = paths.dataset(cfg.data.name), device.type == "cuda"
    splits = (load_split(root, s, cfg.data.subset, spec.image_size, spec.interpolation) for s in ("train", "val"))
    train_loader = build_loader(next(splits), t.batch_size, True, generator, pin)
    val_loader = build_loader(next(splits), t.batch_size, False, pin_memory=pin)
    model = build_model(m.name, len(spec.class_names), **{k: m[k] for k in MODEL_OPTIONS}).to(device)
    if dist.world_size() > 1:  # same initial weights on every rank, then each its own dropout masks and shifts
        torch.manual_seed(cfg.seed + dist.rank())
    div = cfg.finetune.backbone_lr_divisor
    optimizer = build_optimizer(instantiate(o), model, lr=o.lr, weight_decay=o.weight_decay, backbone_lr_divisor=div)
    augment = build_augment(**cfg.data.augment, seed=cfg.seed + dist.rank())
    scheduler = instantiate(cfg.schedule)(optimizer, epochs=t.epochs, steps_per_epoch=len(train_loader))
    criterion, preprocess = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing), Preprocess(pre.mean, pre.std)
    trainer = Trainer(
        model,
        criterion,
        optimizer,
        setup,
        preprocess=preprocess.to(device),
        scheduler=scheduler,
        scaler=setup.grad_scaler(),
        augment=augment,
        grad_clip=t.grad_clip,
        log_every=t.log_every,
    )
    strategy = Strategy(cfg.finetune.strategy, cfg.finetune.freeze_epochs, cfg.finetune.cache_features, t.compile)
    prepared = prepare(strategy, trainer, model, train_loader, val_loader, batch_size=t.batch_size, generator=generator)
    generators = {"loader": generator, **({"augment": augment.generator} if augment else {})}
    objects = Resumable(model, optimizer, scheduler, trainer.scaler, generators)
    state = run.fit(prepared, objects, epochs=t.epochs, stopping=Stopping(**t.early_stopping))
    meta = {"arch": m.name, "source": m.source, **asdict(spec)}
    data_report_dir = Paths.from_config(cfg.paths).report_dir("split")  # the project's, also from a sweep job
    run.finish(
        state,
        meta=meta,
        config=to_dict(cfg),
        experiment=cfg.tracking.experiment,
        dataset=cfg.data.name,
        data_report_dir=data_report_dir,
    )
    return state.best_metrics["val/acc"]


main = stage_main(train)

if __name__ == "__main__":
    main()
