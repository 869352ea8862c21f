"""train: fine-tune the configured network on the split, one MLflow run per call; returns best val/acc."""
from __future__ import annotations

import csv
import json
import logging
from functools import partial
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .. import tracking
from ..data import DATA_ROOT, SPLIT_DIR, dataset_dir
from ..data.datasets import build_loader, load_split
from ..data.split import index_hash, read_labels
from ..data.transforms import build_augment
from ..engine import DeviceSetup, Preprocess, fit
from ..models import build_model, check_image_size, save_checkpoint
from ..plots import plot_curves
from ..utils import atomic_path, git_state, resolve_device, seed_everything, write_json, write_text
from ._app import is_multirun, output_root, overrides, stage_main, to_dict

log = logging.getLogger(__name__)


def run_name(cfg: DictConfig) -> str:
    return cfg.tracking.run_name or f"{cfg.model.name}-{cfg.data.name}-lr{cfg.optim.lr:g}-b{cfg.trainer.batch_size}"


def run_tags(cfg: DictConfig, split_dir, device, out) -> dict[str, str]:
    git = git_state()
    tags = {"imgclf.dataset": cfg.data.name, "imgclf.model": cfg.model.name, "imgclf.device": str(device),
            "imgclf.data_version": index_hash(split_dir), "imgclf.overrides": tracking.redact_overrides(overrides()),
            "mlflow.source.git.commit": git["commit"], "imgclf.git_dirty": git["dirty"]}
    if is_multirun():  # jobs of one sweep share its directory as a tag
        tags["imgclf.sweep"] = str(out.parent)
    return tags


def train(cfg: DictConfig) -> float:
    out = output_root()
    setup = DeviceSetup.for_device(resolve_device(cfg.trainer.device))
    generator = seed_everything(cfg.seed, cfg.trainer.deterministic)
    check_image_size(cfg.model.arch, cfg.model.image_size)
    split_dir = dataset_dir(DATA_ROOT, cfg.data.name) / SPLIT_DIR
    class_names = read_labels(split_dir / "labels.txt")
    load = partial(load_split, DATA_ROOT, cfg.data.name, subset=cfg.data.subset, image_size=cfg.model.image_size)
    pin = setup.device.type == "cuda"
    train_loader = build_loader(load(split="train"), cfg.trainer.batch_size, True, generator, pin)
    val_loader = build_loader(load(split="val"), cfg.trainer.batch_size, False, pin_memory=pin)
    model = build_model(cfg.model.arch, len(class_names), cfg.model.pretrained).to(setup.device)
    preprocess = Preprocess(cfg.model.mean, cfg.model.std).to(setup.device)
    optimizer = instantiate(cfg.optim)(model.parameters())
    scheduler = instantiate(cfg.schedule)(optimizer, epochs=cfg.trainer.epochs, steps_per_epoch=len(train_loader))
    tags = run_tags(cfg, split_dir, setup.device, out)
    with tracking.run(cfg.tracking.uri, cfg.tracking.experiment, run_name=run_name(cfg), tags=tags) as run_id:
        tracking.log_config(to_dict(cfg))
        result = fit(model, nn.CrossEntropyLoss(), optimizer, scheduler, train_loader, val_loader, setup, preprocess,
                     cfg.trainer.epochs, on_epoch=lambda e, m: tracking.log_metrics(m, step=e),
                     log_every=cfg.trainer.log_every, augment=build_augment(**cfg.data.augment, seed=cfg.seed))
        write_outputs(cfg, out, result, class_names, run_id)
    return result.best_metrics["val/acc"]


def write_outputs(cfg: DictConfig, out, result, class_names: list[str], run_id: str) -> None:
    """Checkpoint, curves, summary and config under `out`, then the same into the MLflow run."""
    models, reports = out / "models", out / "reports" / "train"
    save_checkpoint(models / "model.pt", result.best_state, arch=cfg.model.arch, class_names=class_names,
                    image_size=cfg.model.image_size, mean=list(cfg.model.mean), std=list(cfg.model.std),
                    epoch=result.best_epoch, config=tracking.redacted(to_dict(cfg)))
    with atomic_path(reports / "history.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(result.history[0]))
        writer.writeheader()
        writer.writerows(result.history)
    last = result.history[-1]
    summary = {"best_epoch": result.best_epoch, "val/acc": result.best_metrics["val/acc"],
               "val/loss": result.best_metrics["val/loss"], "train/loss": last["train/loss"],
               "train/images_per_sec": last["train/images_per_sec"],
               "train/epoch_time_s": sum(h["train/epoch_time_s"] for h in result.history) / len(result.history)}
    write_json(reports / "metrics.json", summary)
    plot_curves(result.history, reports / "curves.png")
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
