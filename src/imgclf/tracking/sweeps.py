"""A Hydra multirun as one MLflow parent run with its jobs as children; the best trial logged on the parent."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from imgclf import tracking
from imgclf.errors import USER_ERRORS
from imgclf.slurm import check_cluster
from imgclf.tracking import compare as runs

log = logging.getLogger(__name__)

OBJECTIVE = "kept/val/acc"  # what the train stage returns to the sweeper: val/acc of the weights model.pt holds
SWEPT_ENV = "IMGCLF_SWEPT_KEYS"  # the keys a sweep varies, for its jobs' run names
# the parent run's id, set before any job starts: joblib and submitit workers inherit the environment
PARENT_ENV = "IMGCLF_PARENT_RUN_ID"


class _Refused(Exception):
    pass


def record_refused_job(config: dict[str, Any], overrides: list[str], error: str) -> None:
    """A sweep's job whose config was refused before it trained: a FAILED child run holding its params and the
    reason (tag imgclf.error), so the parent counts every trial the sweeper asked for (sweep/failed)."""
    parent, options = parent_run_id(), config.get("tracking") or {}
    if parent is None or not isinstance(options.get("uri"), str):
        return
    name, tags = "refused " + " ".join(overrides), {"imgclf.error": error}
    with contextlib.suppress(_Refused):
        experiment = options.get("experiment") or "imgclf"
        with tracking.run(options["uri"], experiment, run_name=name, tags=tags, parent_id=parent):
            tracking.log_config(config)
            raise _Refused  # the run ends FAILED


def parent_run_id() -> str | None:
    """The MLflow run of the sweep this job belongs to (None outside a sweep): train runs become its children."""
    return os.environ.get(PARENT_ENV) or None


ABBREVIATIONS = {"batch_size": "b", "weight_decay": "wd", "label_smoothing": "ls", "image_size": "px"}


def compact(value: Any) -> str:
    """0.0003 -> 3e-4, 0.01 -> 0.01, 64 -> 64: short enough for a run name."""
    if isinstance(value, float) and value != 0 and abs(value) < 0.01:
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_name(model: str, data: str, lr: float, batch_size: int, overrides: list[str]) -> str:
    """`vgg16-digits-lr3e-4-b64`, plus the other keys the sweep varies (`-wd0.01`): names say what differs."""
    name = f"{model}-{data}-lr{compact(lr)}-b{batch_size}"
    shown = {"model", "data", "optim.lr", "trainer.batch_size"}
    swept = set(filter(None, os.environ.get(SWEPT_ENV, "").split(",")))
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key in shown or key not in swept or not value:
            continue
        leaf = key.rsplit(".", 1)[-1]
        with contextlib.suppress(ValueError):  # not a number: shown as typed
            value = compact(float(value)) if "." in value or "e" in value.lower() else value
        name += f"-{ABBREVIATIONS.get(leaf, leaf)}{value}"
    return name


def search_space(config: DictConfig) -> dict[str, str]:
    """The swept keys and their ranges: sweep overrides on the command line plus hydra.sweeper.params."""
    space = {}
    raw = list(config.hydra.overrides.task)
    for text, ov in zip(raw, OverridesParser.create().parse_overrides(raw)):
        if ov.is_sweep_override():
            space[ov.key_or_group] = text.split("=", 1)[1]  # as typed: 1e-3,3e-4 or range(1,4)
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    space.update({str(k): str(v) for k, v in params.items()})
    return space


def study_sweeper(config: DictConfig) -> bool:
    """The sweep keeps its trials in an Optuna study (hydra/sweeper=imgclf_optuna): one parent run per study."""
    return "imgclf_optuna_sweeper" in str(OmegaConf.select(config, "hydra.sweeper._target_") or "")


STUDY_PARENT = "imgclf.parent_run_id"  # the study's user attribute naming its MLflow parent run


def join_study_parent(config: DictConfig, study, wait_s: float = 120.0) -> str:
    """The parent run of an Optuna study, whichever worker comes first: found through the study's user attribute,
    else made by the one worker that claims it. The claim is a study named `<study>:parent`, which the storage
    creates only once (study names are unique) and the winner deletes once the attribute is written; the others wait
    for the attribute (up to `wait_s`, then make their own: a winner killed in between)."""
    import time

    import optuna

    sweep, lock = SweepRun.active or SweepRun(), f"{study.study_name}:parent"
    attr = lambda: type(study)(study.study_name, study._storage).user_attrs.get(STUDY_PARENT)  # noqa: E731
    found = study.user_attrs.get(STUDY_PARENT)
    if found is None:
        try:
            optuna.create_study(study_name=lock, storage=study._storage)
            claimed = True
        except optuna.exceptions.DuplicatedStudyError:
            claimed = False
        found = attr()  # a winner writes the attribute before it deletes its claim: a claim after that finds it
        deadline = time.monotonic() + wait_s
        while not claimed and found is None and time.monotonic() < deadline:
            time.sleep(0.5)
            found = attr()
        if found is None:
            found = sweep.open(config, {"imgclf.study": study.study_name})
            study.set_user_attr(STUDY_PARENT, found)
        if claimed:
            optuna.delete_study(study_name=lock, storage=study._storage)
    sweep.adopt(config, found)
    log.info("study %s: parent run %s", study.study_name, found)
    return found


TRACKED_JOBS = ("train",)  # the stages whose jobs are MLflow runs of their own: a sweep of them has a parent run


class SweepRun(Callback):
    """Registered in conf/config.yaml: opens the parent run before any job starts (which also creates the
    SQLite store, so parallel jobs never race to create it) and closes it with the best trial."""

    active: SweepRun | None = None  # this process's, for a study sweeper that opens the parent itself

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.space: dict[str, str] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 tracks
            return
        if OmegaConf.select(config, "hydra.job.name") not in TRACKED_JOBS:  # `split -m seed=1,2`: no job is a run
            return
        SweepRun.active = self
        try:
            # before the sweep's folder or parent run exist: a launcher that cannot start a job leaves nothing
            check_cluster(OmegaConf.select(config, "hydra.launcher._target_") or "")
            if not study_sweeper(config):  # a study's parent is found or made once the study is open
                self.open(config)
        except USER_ERRORS as exc:  # Hydra would make it a warning and launch every job into the same wall
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)

    def open(self, config: DictConfig, tags: dict[str, str] | None = None) -> str:
        """Create the parent run and export it to the jobs."""
        tracking.use(config.tracking.outbox, config.tracking.outage_wait_s)
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        self.space = space = search_space(config)
        sweeper = OmegaConf.select(config, "hydra.sweeper._target_") or "basic"
        launcher = OmegaConf.select(config, "hydra.launcher._target_") or "basic"
        name = "sweep-" + "-".join(k.rsplit(".", 1)[-1] for k in space) if space else f"sweep-{sweep_dir.name}"
        params = {f"sweep.space.{k}": v for k, v in space.items()}
        params.update({"sweep.sweeper": sweeper.rsplit(".", 1)[-1], "sweep.launcher": launcher.rsplit(".", 1)[-1]})
        for key in ("n_trials", "direction", "sampler.seed", "pruner"):
            value = OmegaConf.select(config, f"hydra.sweeper.{key}")
            if value is not None:
                params[f"sweep.{key}"] = value
        self.run_id = tracking.start_parent_run(
            config.tracking.uri,
            config.tracking.experiment,
            name,
            {"imgclf.role": "sweep", "imgclf.sweep": str(sweep_dir), **(tags or {})},
            params,
        )
        self.adopt(config, self.run_id)
        log.info("sweep parent run %s (%s), search space %s", self.run_id, name, json.dumps(space))
        # Hydra skips on_multirun_end when the sweep is interrupted or raises: the parent must not stay RUNNING
        atexit.register(self._end_interrupted, config.tracking.uri)
        return self.run_id

    def adopt(self, config: DictConfig, run_id: str) -> None:
        """Make `run_id` this process's sweep parent: its jobs become its children."""
        self.run_id = run_id
        self.space = self.space or search_space(config)
        os.environ[PARENT_ENV] = run_id  # jobs (and joblib/submitit workers) inherit it
        os.environ[tracking.REACHED_ENV] = tracking.resolve_uri(config.tracking.uri)  # jobs wait out an outage
        os.environ[SWEPT_ENV] = ",".join(self.space)

    def _end_interrupted(self, uri: str) -> None:
        if self.run_id is not None:
            tracking.finish_parent_run(uri, self.run_id, "KILLED")
            self.run_id = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.run_id is None:
            return
        os.environ.pop(PARENT_ENV, None)
        os.environ.pop(SWEPT_ENV, None)
        os.environ.pop(tracking.REACHED_ENV, None)
        uri, experiment = config.tracking.uri, config.tracking.experiment
        tracking.wait_for_server(tracking.resolve_uri(uri))  # the server may be away when a long sweep ends
        children = runs.list_runs(uri, experiment, parent=self.run_id)
        pruned = [c for c in children if "imgclf.pruned" in c.tags]
        done = [c for c in children if c.status == "FINISHED" and OBJECTIVE in c.metrics and c not in pruned]
        metrics = {
            "sweep/trials": len(children),
            "sweep/finished": len(done),
            "sweep/pruned": len(pruned),
            "sweep/failed": sum(c.status == "FAILED" for c in children),
        }
        tags = {}
        if done:
            best = runs.best_run(done, OBJECTIVE)
            metrics.update({k: best.metrics[k] for k in (OBJECTIVE, "test/acc", "test/macro_f1") if k in best.metrics})
            tags = {
                "imgclf.best_run_id": best.id,
                "imgclf.best_run_name": best.name,
                "imgclf.best_checkpoint": best.tags.get("imgclf.checkpoint", ""),
                # tags, not params: a study run again with more trials reopens this parent, and MLflow refuses to
                # change a param once logged (the parent kept the first best beside a best_run_id naming the new)
                **{f"best.{k}": best.params[k] for k in self.space if k in best.params},
            }
            log.info(
                "sweep: %d/%d trials finished; best %s = %.4f (run %s)",
                len(done),
                len(children),
                OBJECTIVE,
                metrics[OBJECTIVE],
                best.name,
            )
        sweep_dir = Path(config.hydra.sweep.dir)  # what the Optuna sweeper wrote: its results and the study's plots
        written = [sweep_dir / n for n in ("optimization_results.yaml", "optuna_history.png", "optuna_importance.png")]
        run_id, self.run_id = self.run_id, None
        tracking.finish_parent_run(
            uri,
            run_id,
            "FINISHED" if done else "FAILED",
            metrics=metrics,
            tags=tags,
            artifacts=[path for path in written if path.is_file()],
        )
        if not done:  # a sweep where nothing trained is a failure, for CI and scripts too
            print(f"error: all {len(children)} jobs of the sweep failed (parent run {run_id})", file=sys.stderr)
            sys.exit(1)
