"""A training run from start to finish: its MLflow run, what it resumes, a checkpoint after every epoch, and the
outputs dvc.yaml declares; run.json names the MLflow run that evaluate, export and optimise reopen (tracking.reopen)."""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import os
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgclf import tracking
from imgclf.data.download import file_digest
from imgclf.data.split import data_version, read_labels
from imgclf.files import atomic_path, remove_orphans, write_json, write_text
from imgclf.models.saved import save_checkpoint
from imgclf.paths import Paths
from imgclf.plots import plot_curves
from imgclf.provenance import code_version, environment, git_diff, git_state
from imgclf.tracking import sweeps
from imgclf.training import distributed as dist
from imgclf.training.checkpoint import (
    Resumable,
    Resume,
    check_network,
    find_resume_checkpoint,
    fingerprint,
    hold,
    load_training_state,
    save_training_state,
    set_aside_others,
)
from imgclf.training.engine import FitState, NonFiniteLoss, fit
from imgclf.training.finetune import Prepared

log = logging.getLogger(__name__)

TRAIN_REPORTS = ("history.csv", "metrics.json", "curves.png", "config.yaml")  # under reports/train/


@dataclass(frozen=True)
class Stopping:
    """When fit() stops early: after `patience` epochs without a val/acc gain above `min_delta` (None: never), or
    when `prune(epoch, val_acc)` says so (a sweep trial behind the study's others: training.pruning)."""

    patience: int | None = None
    min_delta: float = 0.0
    prune: Callable[[int, float], bool] | None = None


class TrainingRun:
    """One training run: rank 0 owns the MLflow run and writes checkpoints and outputs; other ranks only train."""

    def __init__(
        self,
        paths: Paths,
        fingerprint: dict,
        resume: Resume | None = None,
        network: str | None = None,
        release: Callable[[], None] | None = None,
    ):
        self.paths, self.fingerprint, self.resume, self.network = paths, fingerprint, resume, network
        self.run_id: str | None = None
        # the checkpoints folder's lock (rank 0's): released when the run ends, or when the plan is dropped unused
        self.release = weakref.finalize(self, release) if release else lambda: None

    @classmethod
    def plan(cls, paths: Paths, resume: str, config: Mapping[str, Any], *, dataset: str) -> TrainingRun:
        """`resume` is trainer.resume: auto continues paths.checkpoints/last.pt only when it was written with the
        same config and process count (and the same content of the model.weights file it started from), the same data
        version and the same code version."""
        flat = tracking.flatten(config)
        weights = flat.get("model.weights")
        if weights and Path(str(weights)).expanduser().is_file():  # the file's content, not only its name
            flat["model.weights"] = f"{weights} {sha256_of(Path(str(weights)).expanduser())}"
        if (cached := pretrained_start(config["model"])) is not None:  # which ImageNet weights the cache holds now
            flat["model.pretrained"] = f"{flat['model.pretrained']} {sha256_of(cached)}"
        current = fingerprint(
            flat,
            world_size=dist.world_size(),
            data_version=data_version(paths.split(dataset)),
            code_version=code_version(),
        )
        release = hold(paths.checkpoints) if dist.is_main() else None  # before anything there is read or moved
        try:
            resuming = find_resume_checkpoint(resume, paths.checkpoints, current)
            model, classes = config["model"], _classes(paths, dataset)
            network = network_name(model, classes)
            if resuming is not None and resuming.mismatch and classes:  # forced across a change: may not fit
                check_network(resuming, network, network_shapes(model["source"], model["name"], classes))
            if dist.is_main():  # one process moves files
                set_aside_others(paths.checkpoints, resume, resuming)
        except BaseException:
            if release is not None:
                release()
            raise
        return cls(paths, current, resuming, network, release)

    @contextmanager
    def open(
        self,
        uri: str,
        experiment: str,
        *,
        name: str,
        tags: Mapping[str, str],
        config: Mapping[str, Any],
    ) -> Iterator[TrainingRun]:
        """The MLflow run (the resumed one when resuming; a child of the sweep's run in a sweep); it ends FINISHED,
        FAILED or KILLED with the block."""
        if not dist.is_main():
            yield self
            return
        try:
            yield from self._open(uri, experiment, name=name, tags=tags, config=config)
        finally:
            self.release()

    def _open(self, uri, experiment, *, name, tags, config) -> Iterator[TrainingRun]:
        resumed = self.resume.state["run_id"] if self.resume else None
        parent_id = sweeps.parent_run_id()
        # the run opens first: a trial that fails on a bad combination is a FAILED run, not a missing one
        with tracking.run(uri, experiment, run_id=resumed, run_name=name, tags=tags, parent_id=parent_id) as run_id:
            self.run_id = run_id
            if self.resume is not None and self.resume.mismatch:  # trainer.resume=PATH across a change
                tracking.set_tags({"imgclf.resumed_across": self.resume.mismatch})
            if resumed is None:
                tracking.log_config(config)
                if tags.get("imgclf.git_dirty") == "true":  # the commit alone does not say what ran
                    tracking.log_text(git_diff(), "git/diff.patch")
            yield self

    def restore(self, objects: Resumable) -> FitState:
        """The resumed checkpoint loaded into `objects` (a fresh state when not resuming)."""
        if self.resume is None:
            return FitState()
        state = load_training_state(self.resume, objects)
        self.resume = None  # restored: let the checkpoint's tensors go
        if dist.is_main() and state.history:
            tracking.set_tags({"imgclf.resumed_after_epoch": state.epoch})
            # a kill between the checkpoint and the metrics of its epoch would leave a gap in the curves
            tracking.log_metrics({k: v for k, v in state.history[-1].items() if k != "epoch"}, step=state.epoch)
        return state

    def fit(self, prepared: Prepared, objects: Resumable, *, epochs: int, stopping: Stopping) -> FitState:
        """fit() from the resumed state, with a checkpoint after every epoch, then its metrics into MLflow (rank 0)."""
        main = dist.is_main()
        state = self.restore(objects)

        def after_epoch(epoch: int, metrics: dict, fit_state: FitState) -> None:
            live = main and stopping.prune and not fit_state.stopped_early and epoch < epochs
            if live and stopping.prune(epoch, metrics["val/acc"]):
                fit_state.stopped_early = fit_state.pruned = True
                tracking.set_tags({"imgclf.pruned": f"after epoch {epoch} of {epochs}"})
            if main:  # checkpoint first: a kill between the two leaves this epoch resumable
                save_training_state(
                    self.paths.checkpoints,
                    fit_state,
                    objects,
                    run_id=self.run_id,
                    fingerprint=self.fingerprint,
                    best_improved=fit_state.best_epoch == epoch,
                    network=self.network,
                )
                tracking.log_metrics(metrics, step=epoch)

        last = self.paths.checkpoints / "last.pt"
        try:
            return fit(
                prepared.trainer,
                prepared.train_loader,
                prepared.val_loader,
                epochs,
                state,
                network=objects.model,
                patience=stopping.patience,
                min_delta=stopping.min_delta,
                before_epoch=prepared.before_epoch,
                after_epoch=after_epoch,
            )
        except NonFiniteLoss as exc:
            kept = f"the last good checkpoint is {last}" if last.is_file() else "no epoch finished: no checkpoint"
            raise NonFiniteLoss(f"{exc}; {kept}") from None

    def finish(
        self,
        state: FitState,
        kept: Kept,
        network,
        *,
        meta: Mapping[str, Any],
        config: Mapping[str, Any],
        experiment: str,
        dataset: str,
        data_report_dir: Path,
    ) -> None:
        """Rank 0: model.pt, the train reports and run.json, the same into MLflow; then no checkpoint is left."""
        if not dist.is_main():
            return
        config = tracking.redacted(config)  # the checkpoint and config.yaml are artifacts: no secrets in them
        save_checkpoint(self.paths.model_file, kept.weights(state, network), epoch=kept.epoch, config=config, **meta)
        reports = self.paths.report_dir("train")
        summary = write_train_reports(reports, state, config, kept)
        tracking.log_metrics({k if k.startswith("kept") else f"best/{k}": v for k, v in summary.items()})
        tracking.set_tags({"imgclf.kept": f"{kept.rule} (epoch {kept.epoch})"})
        for name in TRAIN_REPORTS:
            tracking.log_artifact(reports / name, "train")
        tracking.log_artifact(self.paths.labels(dataset), "train")
        log_data_report(self.paths.split(dataset) / "report.json", data_report_dir)  # the split it trained on
        tracking.log_artifact(self.paths.model_file, "checkpoint")  # once per run: checkpoints are hundreds of MB
        write_json(self.paths.run_file, {"run_id": self.run_id, "experiment": experiment})
        for name in ("last.pt", "best.pt"):  # finished: model.pt is the result, nothing to resume
            (self.paths.checkpoints / name).unlink(missing_ok=True)
            remove_orphans(self.paths.checkpoints / name)  # halves of writes a SIGKILL interrupted
        with contextlib.suppress(OSError):  # no empty folder left behind; one holding anything else stays
            self.paths.checkpoints.rmdir()


def _classes(paths: Paths, dataset: str) -> int | None:
    labels = paths.labels(dataset)
    return len(read_labels(labels)) if labels.is_file() else None  # no split yet: building the model says so


def network_name(model: Mapping[str, Any], classes: int | None) -> str:
    """What the config's `model` builds for `classes`, in words a checkpoint keeps: `timm/test_resnet, 3 classes`."""
    return f"{model['source']}/{model['name']}" + (f", {classes} classes" if classes else "")


def network_shapes(source: str, name: str, classes: int) -> dict[str, tuple]:
    """The name and shape of every weight of the network the config builds (on the meta device: no memory)."""
    import torch

    from imgclf.models.build import build_model

    try:
        with torch.device("meta"):
            network = build_model(name, classes, source=source)
    except (NotImplementedError, RuntimeError):  # an architecture whose init reads values: built for real
        network = build_model(name, classes, source=source)
    return {k: tuple(v.shape) for k, v in network.state_dict().items()}


def run_tags(
    paths: Paths,
    dataset: str,
    device: object,
    overrides: list[str],
    sweep_dir: Path | None,
    *,
    start: Mapping[str, Any] | None = None,
    **labels: str,
) -> dict[str, str]:
    """What a run says about itself: data set and its version, device, overrides, where model.pt goes, git state,
    the sha256 of the weights file it starts from (`start`, the model's config: model.weights, or the cached
    ImageNet weights of model.pretrained, which no DVC dependency follows); `labels` become imgclf.<name> tags."""
    git = git_state()
    tags = {
        "imgclf.dataset": dataset,
        "imgclf.device": str(device),
        "imgclf.data_version": data_version(paths.split(dataset)),
        "imgclf.overrides": tracking.redact_overrides(overrides),
        "imgclf.world_size": str(dist.world_size()),
        "imgclf.checkpoint": str(paths.model_file.resolve()),
        "mlflow.source.git.commit": git["commit"],
        "imgclf.git_dirty": git["dirty"],
        "imgclf.code_version": code_version(),
        **{f"imgclf.env.{k}": v for k, v in environment().items()},
        **{f"imgclf.{k}": v for k, v in labels.items()},
    }
    if sweep_dir is not None:
        tags["imgclf.sweep"] = str(Path(sweep_dir).resolve())
    if "SLURM_JOB_ID" in os.environ:  # `sacct -j`, `scontrol show job` find the job (array: <job>_<task>)
        array = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        tags["imgclf.slurm_job"] = "_".join(array) if all(array) else os.environ["SLURM_JOB_ID"]
    weights = (start or {}).get("weights")
    if weights and Path(weights).expanduser().is_file():
        tags["imgclf.weights_sha256"] = sha256_of(Path(weights).expanduser())
    if (cached := pretrained_start(start or {})) is not None:
        tags |= {"imgclf.pretrained_file": str(cached), "imgclf.pretrained_sha256": sha256_of(cached)}
    return tags


def pretrained_start(model: Mapping[str, Any]) -> Path | None:
    """The cached ImageNet weights file a run of `model` (its config) starts from, or None: no model.pretrained, a
    model.weights file instead, or nothing cached yet (the download comes with the network)."""
    if model.get("weights") or not model.get("pretrained"):
        return None
    from imgclf.models.weights import WeightsNotFound, pretrained_file

    try:
        return pretrained_file(model["source"], model["name"], download=False)
    except WeightsNotFound:
        return None


@functools.lru_cache(maxsize=8)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    return file_digest(path, "sha256")


def sha256_of(path: Path) -> str:
    """A weights file's sha256, read once per process while the file is unchanged (the plan and the tags ask)."""
    info = path.stat()
    return _sha256(str(path.resolve()), info.st_mtime_ns, info.st_size)


def log_data_report(report: Path, report_dir: Path) -> None:
    """The split stage's report under `data/` (reports/split/: the JSON, counts and sample grid), and its skipped
    and duplicate counts as metrics."""
    if not report.is_file():
        return
    if report_dir.is_dir():
        tracking.log_artifacts(report_dir, "data")
    content = json.loads(report.read_text())
    tracking.log_metrics(
        {
            "data/skipped_files": sum(content["skipped"]["counts"].values()),
            "data/cross_split_duplicates": content["cross_split_duplicates"]["groups"],
        }
    )


@dataclass(frozen=True)
class Kept:
    """The epoch model.pt holds (trainer.keep): the last, or the one with the best val/acc, and its metrics."""

    rule: str
    epoch: int
    metrics: dict

    @classmethod
    def choose(cls, rule: str, state: FitState) -> Kept:
        if rule == "best":
            return cls(rule, state.best_epoch, state.best_metrics)
        if rule == "last":  # a one-cycle or cosine schedule ends annealed: its last epoch is the model it made
            if state.stopped_early:
                log.warning(
                    "early stopping cut the schedule short: model.pt holds epoch %d, the last; trainer.keep=best "
                    "would keep epoch %d (best val/acc)",
                    state.epoch,
                    state.best_epoch,
                )
            return cls(rule, state.epoch, state.history[-1])
        raise ValueError(f"keep={rule!r}: last or best (imgclf.options checks trainer.keep)")

    def weights(self, state: FitState, network) -> dict:
        if self.rule == "best":
            return state.best_state
        return {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}


def write_train_reports(out: Path, state: FitState, config: Mapping[str, Any], kept: Kept) -> dict:
    """history.csv (the curves DVC plots), metrics.json (the summary), curves.png and config.yaml under `out`."""
    from omegaconf import OmegaConf

    with atomic_path(out / "history.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(state.history[0]))
        writer.writeheader()
        writer.writerows(state.history)
    last = state.history[-1]
    summary = {
        "best_epoch": state.best_epoch,
        "val/acc": state.best_metrics["val/acc"],
        "val/loss": state.best_metrics["val/loss"],
        "kept_epoch": kept.epoch,  # the epoch model.pt holds, and its validation figures
        "kept/val/acc": kept.metrics["val/acc"],
        "kept/val/loss": kept.metrics["val/loss"],
        "train/loss": last["train/loss"],
        "train/images_per_sec": last["train/images_per_sec"],
        "epochs_run": len(state.history),
        "train/epoch_time_s": sum(h["train/epoch_time_s"] for h in state.history) / len(state.history),
    }
    write_json(out / "metrics.json", summary)
    plot_curves(state.history, out / "curves.png")
    write_text(out / "config.yaml", OmegaConf.to_yaml(dict(config)))
    return summary
