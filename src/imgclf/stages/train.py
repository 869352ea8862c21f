"""train: fine-tune the configured network on the split, one MLflow run per call; returns best val/acc."""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .. import distributed as dist
from .. import tracking
from .. import sweeps
from ..checkpoint import Resume, find_resume_checkpoint, fingerprint, load_training_state, save_training_state
from ..data import DATA_ROOT, SPLIT_DIR, dataset_dir
from ..data.datasets import TensorImageDataset, build_loader, load_split
from ..data.split import index_hash, read_labels
from ..data.transforms import build_augment
from ..engine import DeviceSetup, FitState, NonFiniteLoss, Preprocess, Trainer, compute_features, fit
from ..models import build_model, head, param_groups, resolve_preprocessing, save_checkpoint, set_backbone_trainable
from ..plots import plot_curves
from ..utils import atomic_path, git_state, resolve_device, seed_everything, write_json, write_text
from ._app import is_multirun, output_root, overrides, stage_main, to_dict

log = logging.getLogger(__name__)

FREEZE_EPOCHS = {"head": math.inf, "full": 0}  # gradual: finetune.freeze_epochs


def run_name(cfg: DictConfig) -> str:
    return cfg.tracking.run_name or sweeps.run_name(cfg.model.name, cfg.data.name, cfg.optim.lr,
                                                    cfg.trainer.batch_size, overrides())


def run_tags(cfg: DictConfig, split_dir, device, out) -> dict[str, str]:
    git = git_state()
    tags = {"imgclf.dataset": cfg.data.name, "imgclf.model": cfg.model.name, "imgclf.device": str(device),
            "imgclf.data_version": index_hash(split_dir), "imgclf.overrides": tracking.redact_overrides(overrides()),
            "imgclf.world_size": str(dist.world_size()), "imgclf.finetune": cfg.finetune.strategy,
            "imgclf.checkpoint": str((out / "models" / "model.pt").resolve()),
            "mlflow.source.git.commit": git["commit"], "imgclf.git_dirty": git["dirty"]}
    if is_multirun():  # jobs of one sweep share its directory as a tag
        tags["imgclf.sweep"] = str(out.parent.resolve())
    return tags


def freeze_epochs(cfg: DictConfig) -> float:
    strategy = cfg.finetune.strategy
    if strategy not in (*FREEZE_EPOCHS, "gradual"):
        raise ValueError(f"unknown finetune.strategy '{strategy}'; choose one of: head, full, gradual")
    return FREEZE_EPOCHS.get(strategy, cfg.finetune.freeze_epochs)


@dataclass
class RunPlan:
    """Where checkpoints go, what to resume from, and the MLflow run this training logs into (rank 0)."""

    checkpoint_dir: Path
    resume_from: Resume | None
    config_hash: str
    run_id: str | None = None


def train(cfg: DictConfig) -> float:
    out = output_root()
    device = dist.setup(resolve_device(cfg.trainer.device))
    try:
        config = to_dict(cfg)
        plan = RunPlan(out / cfg.trainer.checkpoint_dir, None, fingerprint(tracking.flatten(config), dist.world_size()))
        plan.resume_from = find_resume_checkpoint(str(cfg.trainer.resume), plan.checkpoint_dir, plan.config_hash)
        resumed_run = plan.resume_from.state["run_id"] if plan.resume_from else None
        split_dir = dataset_dir(DATA_ROOT, cfg.data.name) / SPLIT_DIR
        # the run opens first: a trial that fails on a bad combination is a FAILED run, not a missing one
        context = (tracking.run(cfg.tracking.uri, cfg.tracking.experiment, run_id=resumed_run,
                                run_name=run_name(cfg), tags=run_tags(cfg, split_dir, device, out))
                   if dist.is_main() else contextlib.nullcontext())
        with context as plan.run_id:
            if dist.is_main() and resumed_run is None:
                tracking.log_config(config)
            return _train(cfg, out, device, plan)
    finally:
        dist.teardown()


def _train(cfg: DictConfig, out: Path, device: torch.device, plan: RunPlan) -> float:
    setup = DeviceSetup.for_device(device, cfg.trainer.amp, cfg.trainer.channels_last)
    generator = seed_everything(cfg.seed, cfg.trainer.deterministic)
    spec = resolve_preprocessing(cfg.model.source, cfg.model.name, cfg.model.image_size, cfg.model.mean,
                                 cfg.model.std, cfg.model.interpolation)
    split_dir = dataset_dir(DATA_ROOT, cfg.data.name) / SPLIT_DIR
    class_names = read_labels(split_dir / "labels.txt")
    load = partial(load_split, DATA_ROOT, cfg.data.name, subset=cfg.data.subset, image_size=spec.image_size,
                   interpolation=spec.interpolation)
    pin = device.type == "cuda"
    train_loader = build_loader(load(split="train"), cfg.trainer.batch_size, True, generator, pin)
    val_loader = build_loader(load(split="val"), cfg.trainer.batch_size, False, pin_memory=pin)
    model = build_model(cfg.model.name, len(class_names), cfg.model.source, cfg.model.pretrained,
                        cfg.model.weights, cfg.model.download, cfg.model.dropout).to(device)
    preprocess = Preprocess(spec.mean, spec.std).to(device)
    if dist.world_size() > 1:  # same initial weights on every rank, then each its own dropout masks and shifts
        torch.manual_seed(cfg.seed + dist.rank())
    frozen_for = freeze_epochs(cfg)
    optimizer = instantiate(cfg.optim)(param_groups(model, cfg.optim.lr, cfg.optim.weight_decay, cfg.finetune.lr_mult))
    augment = build_augment(**cfg.data.augment, seed=cfg.seed + dist.rank())
    trainer = Trainer(model, nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing), optimizer, setup,
                      preprocess, scaler=setup.grad_scaler(), augment=augment, grad_clip=cfg.trainer.grad_clip,
                      log_every=cfg.trainer.log_every)
    cache = frozen_for == math.inf and cfg.finetune.cache_features
    if cache and (augment is not None or dist.is_distributed()):
        log.info("finetune.cache_features: not caching, %s", "data.augment changes the input every epoch"
                 if augment is not None else "each process would cache only its own shard")
    if cache and augment is None and not dist.is_distributed():
        train_loader, val_loader = head_on_cached_features(trainer, model, (train_loader, val_loader),
                                                           cfg.trainer.batch_size, generator)
        before_epoch = None
    else:
        before_epoch = Freezing(trainer, model, frozen_for, cfg.trainer.compile)
    trainer.scheduler = instantiate(cfg.schedule)(optimizer, epochs=cfg.trainer.epochs,
                                                  steps_per_epoch=len(train_loader))
    generators = {"loader": generator, **({"augment": augment.generator} if augment else {})}
    state = FitState()
    if plan.resume_from is not None:
        state = load_training_state(plan.resume_from, model, optimizer, trainer.scheduler, trainer.scaler, generators)
        plan.resume_from = None  # restored: let the checkpoint's tensors go
        if dist.is_main() and state.history:
            tracking.set_tags({"imgclf.resumed_after_epoch": state.epoch})
            # a kill between the checkpoint and the metrics of its epoch would leave a gap in the curves
            last = {k: v for k, v in state.history[-1].items() if k != "epoch"}
            tracking.log_metrics(last, step=state.epoch)
    return run_fit(cfg, out, plan, trainer, model, (train_loader, val_loader), state, generators, before_epoch,
                   (class_names, spec))


def head_on_cached_features(trainer: Trainer, model: nn.Module, loaders, batch_size: int, generator):
    """Frozen backbone, same input every epoch: compute its features once; epochs then train only the head."""
    set_backbone_trainable(model, False)
    setup, pin = trainer.setup, trainer.setup.device.type == "cuda"
    # in index order, without touching the shuffling generator: the same batches as without the cache
    train_set, val_set = (TensorImageDataset(*compute_features(model, build_loader(loader.dataset, batch_size, False),
                                                               setup, trainer.preprocess)) for loader in loaders)
    trainer.model, trainer.preprocess, trainer.frozen_backbone = head(model), None, False
    log.info("head only on cached features: %d train, %d val", len(train_set), len(val_set))
    return (build_loader(train_set, batch_size, True, generator, pin),
            build_loader(val_set, batch_size, False, pin_memory=pin))


class Freezing:
    """Called before each epoch: the backbone is frozen for the first `frozen_for` epochs, then trains too."""

    def __init__(self, trainer: Trainer, model: nn.Module, frozen_for: float, compile_model: bool):
        self.trainer, self.model, self.frozen_for, self.frozen = trainer, model, frozen_for, None
        self.compile = compile_model and trainer.setup.device.type == "cuda"
        if compile_model and not self.compile:
            log.info("trainer.compile=true: compiling only on CUDA; running eagerly on %s", trainer.setup.device)

    def __call__(self, epoch: int) -> None:
        frozen = epoch <= self.frozen_for
        if frozen == self.frozen:
            return
        log.info("epoch %d: backbone %s", epoch, "frozen, head trains" if frozen else "trains with the head")
        self.frozen = frozen
        set_backbone_trainable(self.model, not frozen)
        self.trainer.frozen_backbone = frozen
        wrapped = dist.wrap(self.model, self.trainer.setup.device)  # DDP syncs what trains when it wraps: rewrap
        self.trainer.model = torch.compile(wrapped) if self.compile else wrapped


def run_fit(cfg, out, plan: RunPlan, trainer: Trainer, model, loaders, state: FitState, generators, before_epoch,
            meta) -> float:
    """fit() with a checkpoint after every epoch (rank 0 writes and logs); outputs once it finishes."""
    main = dist.is_main()

    def after_epoch(epoch: int, metrics: dict, fit_state: FitState) -> None:
        if main:  # checkpoint first: a kill between the two leaves this epoch resumable
            save_training_state(plan.checkpoint_dir, fit_state, model, trainer.optimizer, trainer.scheduler,
                                trainer.scaler, generators, plan.run_id, plan.config_hash,
                                fit_state.best_epoch == epoch)
            tracking.log_metrics(metrics, step=epoch)

    last = plan.checkpoint_dir / "last.pt"
    try:
        state = fit(trainer, *loaders, cfg.trainer.epochs, state, weights=model,
                    patience=cfg.trainer.early_stopping.patience, min_delta=cfg.trainer.early_stopping.min_delta,
                    before_epoch=before_epoch, after_epoch=after_epoch)
    except NonFiniteLoss as exc:
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no epoch finished: no checkpoint"
        raise NonFiniteLoss(f"{exc}; {kept}") from None
    if main:
        write_outputs(cfg, out, state, *meta, plan.run_id)
        for path in (last, plan.checkpoint_dir / "best.pt"):  # finished: model.pt is the result, nothing to resume
            path.unlink(missing_ok=True)
    return state.best_metrics["val/acc"]


def write_outputs(cfg: DictConfig, out, state: FitState, class_names: list[str], spec, run_id: str) -> None:
    """Checkpoint, curves, summary and config under `out`, then the same into the MLflow run."""
    models, reports = out / "models", out / "reports" / "train"
    save_checkpoint(models / "model.pt", state.best_state, arch=cfg.model.name, source=cfg.model.source,
                    class_names=class_names, image_size=spec.image_size, mean=spec.mean, std=spec.std,
                    interpolation=spec.interpolation, epoch=state.best_epoch,
                    config=tracking.redacted(to_dict(cfg)))
    with atomic_path(reports / "history.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(state.history[0]))
        writer.writeheader()
        writer.writerows(state.history)
    last = state.history[-1]
    summary = {"best_epoch": state.best_epoch, "val/acc": state.best_metrics["val/acc"],
               "val/loss": state.best_metrics["val/loss"], "train/loss": last["train/loss"],
               "train/images_per_sec": last["train/images_per_sec"], "epochs_run": len(state.history),
               "train/epoch_time_s": sum(h["train/epoch_time_s"] for h in state.history) / len(state.history)}
    write_json(reports / "metrics.json", summary)
    plot_curves(state.history, reports / "curves.png")
    write_text(reports / "config.yaml", OmegaConf.to_yaml(tracking.redacted(to_dict(cfg))))
    log_outputs(cfg, models, reports, summary)
    write_json(models / "run.json", {"run_id": run_id, "experiment": cfg.tracking.experiment})


def log_outputs(cfg: DictConfig, models, reports, summary: dict) -> None:
    tracking.log_metrics({f"best/{k}": v for k, v in summary.items()})
    for path in ("history.csv", "metrics.json", "curves.png", "config.yaml"):
        tracking.log_artifact(reports / path, "train")
    tracking.log_artifact(dataset_dir(DATA_ROOT, cfg.data.name) / SPLIT_DIR / "labels.txt", "train")
    data_report = Path("reports/split/report.json")
    if data_report.is_file():  # the data report of the split this run trained on
        tracking.log_artifacts(data_report.parent, "data")
        report = json.loads(data_report.read_text())
        tracking.log_metrics({"data/skipped_files": sum(report["skipped"]["counts"].values()),
                              "data/cross_split_duplicates": report["cross_split_duplicates"]["groups"]})
    tracking.log_artifact(models / "model.pt", "checkpoint")  # once per run: checkpoints are hundreds of MB


main = stage_main(train)

if __name__ == "__main__":
    main()
