"""train: fine-tune the configured network on the split, one MLflow run per call; returns best val/acc."""
from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from .. import distributed as dist
from .. import sweeps, tracking
from ..checkpoint import Resumable, fingerprint
from ..data.datasets import build_loader, load_split
from ..data.split import index_hash, read_labels
from ..data.transforms import build_augment
from ..engine import DeviceSetup, Preprocess, Trainer
from ..finetune import Strategy, prepare
from ..lifecycle import Stopping, TrainingRun
from ..models import build_model, resolve_preprocessing
from ..optim import build_optimizer
from ..paths import Paths
from ..utils import git_state, resolve_device, seed_everything
from ._app import is_multirun, output_root, overrides, stage_main, to_dict


def train(cfg: DictConfig) -> float:
    paths = Paths.from_config(cfg.paths, output_root())
    device = dist.setup(resolve_device(cfg.trainer.device))
    try:
        config = to_dict(cfg)
        run = TrainingRun.plan(paths, str(cfg.trainer.resume), fingerprint(tracking.flatten(config), dist.world_size()))
        name = cfg.tracking.run_name or sweeps.run_name(cfg.model.name, cfg.data.name, cfg.optim.lr,
                                                        cfg.trainer.batch_size, overrides())
        with run.open(cfg.tracking.uri, cfg.tracking.experiment, name=name, tags=run_tags(cfg, paths, device),
                      config=config, parent_id=sweeps.parent_run_id()):
            return _train(cfg, paths, device, run)
    finally:
        dist.teardown()


def run_tags(cfg: DictConfig, paths: Paths, device: torch.device) -> dict[str, str]:
    git = git_state()
    tags = {"imgclf.dataset": cfg.data.name, "imgclf.model": cfg.model.name, "imgclf.device": str(device),
            "imgclf.data_version": index_hash(paths.split(cfg.data.name)),
            "imgclf.overrides": tracking.redact_overrides(overrides()), "imgclf.world_size": str(dist.world_size()),
            "imgclf.finetune": cfg.finetune.strategy, "imgclf.checkpoint": str(paths.model_file.resolve()),
            "mlflow.source.git.commit": git["commit"], "imgclf.git_dirty": git["dirty"]}
    if is_multirun():  # jobs of one sweep share its directory as a tag
        tags["imgclf.sweep"] = str(output_root().parent.resolve())
    return tags


def _train(cfg: DictConfig, paths: Paths, device: torch.device, run: TrainingRun) -> float:
    setup = DeviceSetup.for_device(device, cfg.trainer.amp, cfg.trainer.channels_last)
    generator = seed_everything(cfg.seed, cfg.trainer.deterministic)
    spec = resolve_preprocessing(cfg.model.source, cfg.model.name, cfg.model.image_size, cfg.model.mean,
                                 cfg.model.std, cfg.model.interpolation)
    class_names = read_labels(paths.labels(cfg.data.name))
    train_set, val_set = (load_split(paths.dataset(cfg.data.name), split, cfg.data.subset, spec.image_size,
                                     spec.interpolation) for split in ("train", "val"))
    pin = device.type == "cuda"
    train_loader = build_loader(train_set, cfg.trainer.batch_size, True, generator, pin)
    val_loader = build_loader(val_set, cfg.trainer.batch_size, False, pin_memory=pin)
    model = build_model(cfg.model.name, len(class_names), source=cfg.model.source, pretrained=cfg.model.pretrained,
                        weights=cfg.model.weights, download=cfg.model.download, dropout=cfg.model.dropout).to(device)
    if dist.world_size() > 1:  # same initial weights on every rank, then each its own dropout masks and shifts
        torch.manual_seed(cfg.seed + dist.rank())
    optimizer = build_optimizer(instantiate(cfg.optim), model, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                backbone_lr_divisor=cfg.finetune.backbone_lr_divisor)
    augment = build_augment(**cfg.data.augment, seed=cfg.seed + dist.rank())
    scheduler = instantiate(cfg.schedule)(optimizer, epochs=cfg.trainer.epochs, steps_per_epoch=len(train_loader))
    trainer = Trainer(model, nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing), optimizer, setup,
                      preprocess=Preprocess(spec.mean, spec.std).to(device), scheduler=scheduler,
                      scaler=setup.grad_scaler(), augment=augment, grad_clip=cfg.trainer.grad_clip,
                      log_every=cfg.trainer.log_every)
    strategy = Strategy(cfg.finetune.strategy, cfg.finetune.freeze_epochs, cfg.finetune.cache_features,
                        cfg.trainer.compile)
    prepared = prepare(strategy, trainer, model, train_loader, val_loader, batch_size=cfg.trainer.batch_size,
                       generator=generator)
    objects = Resumable(model, optimizer, scheduler, trainer.scaler,
                        {"loader": generator, **({"augment": augment.generator} if augment else {})})
    state = run.fit(prepared.trainer, (prepared.train_loader, prepared.val_loader), objects=objects,
                    state=run.restore(objects), epochs=cfg.trainer.epochs,
                    stopping=Stopping(cfg.trainer.early_stopping.patience, cfg.trainer.early_stopping.min_delta),
                    before_epoch=prepared.before_epoch)
    meta = {"arch": cfg.model.name, "source": cfg.model.source, "class_names": class_names,
            "image_size": spec.image_size, "mean": spec.mean, "std": spec.std, "interpolation": spec.interpolation}
    run.finish(state, meta=meta, config=to_dict(cfg), experiment=cfg.tracking.experiment,
               labels_file=paths.labels(cfg.data.name), data_report=paths.report_dir("split") / "report.json")
    return state.best_metrics["val/acc"]


main = stage_main(train)

if __name__ == "__main__":
    main()
