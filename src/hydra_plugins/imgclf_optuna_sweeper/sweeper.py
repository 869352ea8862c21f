"""An Optuna search as a Hydra sweeper, on Optuna's public ask/tell API, with the study in a database.

`python -m imgclf.stages.train -m +sweep=optuna_lr_wd` asks the study for one trial at a time and launches it as a
Hydra job (basic, joblib or submitit launcher). The study lives in `storage` (default: `optuna.db` in the project,
SQLite; any SQLAlchemy URL, e.g. the team's PostgreSQL) under a name derived from the sweep's config, so:

- the same command again **resumes**: finished trials are not rerun and the sampler sees them;
- the same command on other processes or machines **joins** the study: `n_trials` is the study's total;
- a trial whose worker died (no heartbeat for `3 x heartbeat_s`) is marked FAILED and its budget asked again;
- the train stage reports `val/acc` after each epoch and stops when `pruner` says so (PRUNED in the study).

Only this module's names are imported when Hydra scans its plugins (also inside DVC's composition): Optuna and
imgclf are imported when a sweep starts. No `from __future__ import annotations`: Hydra runs this module outside
sys.modules, where dataclasses cannot resolve string annotations.
"""

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from imgclf.credentials import hide
from imgclf.errors import first_line

log = logging.getLogger(__name__)

STORAGE_ENV = "IMGCLF_OPTUNA_STORAGE"  # as imgclf.training.pruning names them (a test checks they agree)
STUDY_ENV = "IMGCLF_OPTUNA_STUDY"
TRIAL_ENV = "IMGCLF_OPTUNA_TRIAL_ID"
PRUNER_ENV = "IMGCLF_OPTUNA_PRUNER"
FAILED_BY_JOB = "imgclf.failed"  # a trial whose job failed: it counts towards n_trials (a killed one does not)
PRUNED_AT = "imgclf.pruned_at_epoch"  # set by the train stage when the pruner stopped it (imgclf.training.pruning)
SURPLUS = "imgclf.surplus"  # asked when another worker had already taken the last of the budget: not run
BEATING = "imgclf.beating"  # set once the asked trial has its first heartbeat (see _fail_unbeaten)
PRUNERS = ("median", "hyperband", "none")
SAMPLERS = ("tpe", "random")


@dataclass
class SamplerConf:
    name: str = "tpe"  # tpe | random
    seed: int | None = None  # same seed, same trials (on one worker)
    n_startup_trials: int = 10  # tpe: random trials before the model takes over


@dataclass
class ImgclfOptunaSweeperConf:
    _target_: str = "hydra_plugins.imgclf_optuna_sweeper.sweeper.ImgclfOptunaSweeper"
    direction: str = "maximize"
    study_name: str | None = None  # a prefix; the study is <study_name>-<hash of the sweep's config>
    storage: str | None = None  # null: $IMGCLF_OPTUNA_STORAGE, else sqlite:///optuna.db in the project
    n_trials: int = 20  # the study's total, over every worker and every rerun
    pruner: str = "median"  # median | hyperband | none: stop a trial whose val/acc falls behind
    heartbeat_s: int = 30  # a RUNNING trial without a heartbeat for 3x this is failed and asked again
    sampler: SamplerConf = field(default_factory=SamplerConf)
    params: dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="imgclf_optuna", node=ImgclfOptunaSweeperConf)


def distribution(override) -> Any:
    """Hydra's sweep syntax as an Optuna distribution: `a,b,c` and choice() categorical, interval() float,
    tag(log, interval()) on a log scale, tag(int, interval()) integers, range() steps."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep, Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if isinstance(value, RangeSweep):
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(value.start, value.stop - value.step, step=value.step)
        return IntDistribution(int(value.start), int(value.stop) - 1, step=int(value.step))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if "int" in value.tags:  # Hydra parses interval() ends as floats: tag(int, interval(2, 8)) for integers
            return IntDistribution(int(value.start), int(value.end), log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{override.input_line} is not a search space Optuna can sample")


def suggest(trial, name: str, dist) -> Any:
    """The trial's value of one key, through Optuna's public suggest API."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def study_key(space: list[str], fixed: list[str], conf: ImgclfOptunaSweeperConf, inputs: dict | None = None) -> str:
    """What makes two sweeps the same study: the space, the other overrides, the direction, the sampler and the
    `inputs` its trials train on (the data and code versions: a study resumed after a relabel mixed trials of two
    data sets, and chose the best across them); not n_trials (raising it extends the study), nor hydra.* settings
    such as the sweep dir."""
    text = json.dumps(
        {"space": sorted(space), "fixed": sorted(fixed), "direction": conf.direction, "sampler": conf.sampler.name}
        | ({"inputs": inputs} if inputs else {})
    )
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def trial_inputs(config) -> dict:
    """The data version of the split the trials read (none before split has run), the code version and the config
    as composed before the search: what a resumed training requires to be the same, asked of a resumed study too."""
    from imgclf.data.split import data_version
    from imgclf.paths import SPLIT_DIR
    from imgclf.provenance import code_version

    split = Path(str(config.paths.data)) / str(config.data.name) / SPLIT_DIR  # Paths.split, without the outputs
    task = OmegaConf.to_container(config, resolve=False)  # conf/ as composed (an edit there is another study)
    composed = json.dumps({k: v for k, v in task.items() if k != "hydra"}, sort_keys=True, default=str)
    return {"data": data_version(split) if split.is_dir() else None, "code": code_version(), "config": composed}


def refuse(message: str) -> NoReturn:
    """A bad sweeper setting: one line and exit 1, as the stages answer a bad config (Hydra would wrap an exception
    raised while it instantiates the sweeper in four lines of its own)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


def foreign_sqlite(url: str) -> str | None:
    """Why a SQLite storage URL names a file that is no Optuna storage (another program's database, not a database,
    a pipe or a folder), or None (a new or empty file, or a study's database)."""
    from imgclf.credentials import sqlite_path
    from imgclf.errors import BadInput
    from imgclf.targets import sqlite_tables

    found = sqlite_path(url)
    path = Path(os.path.expanduser(found)) if found is not None else None
    if path is None or not (path.exists() or path.is_symlink()) or str(path) == ":memory:":
        return None
    if not path.is_file():
        return f"{path} is not a file"
    try:
        tables = sqlite_tables(path) if path.stat().st_size else []  # an empty file: a new database
    except BadInput as exc:
        return str(exc)
    return None if not tables or "studies" in tables else f"{path} is an SQLite database of something else"


class Heartbeat:
    """Records a RUNNING trial's heartbeat from a thread while its job runs (ask/tell has no optimize() doing it)."""

    def __init__(self, storage, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stopped, self.thread = threading.Event(), threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stopped.is_set():
            self.storage.record_heartbeat(self.trial_id)
            self.stopped.wait(self.interval)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()


class ImgclfOptunaSweeper(Sweeper):
    def __init__(self, **conf: Any) -> None:
        self.conf = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ImgclfOptunaSweeperConf), conf))
        c, s = self.conf, self.conf.sampler  # a trial's seed is sampler.seed + its number: below 2**32, as NumPy's
        for key, value, ok, valid in (
            ("pruner", c.pruner, c.pruner in PRUNERS, f"one of {', '.join(PRUNERS)}"),
            ("sampler.name", s.name, s.name in SAMPLERS, f"one of {', '.join(SAMPLERS)}"),
            ("direction", c.direction, c.direction in ("maximize", "minimize"), "one of maximize, minimize"),
            ("n_trials", c.n_trials, c.n_trials >= 1, "an integer >= 1"),
            ("heartbeat_s", c.heartbeat_s, c.heartbeat_s >= 1, "an integer >= 1"),
            ("sampler.seed", s.seed, s.seed is None or 0 <= s.seed < 2**31, "null or an integer from 0 to 2**31 - 1"),
            ("sampler.n_startup_trials", s.n_startup_trials, s.n_startup_trials >= 0, "an integer >= 0"),
        ):
            if not ok:
                refuse(f"hydra.sweeper.{key}={value} is not valid: {valid}")

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.job_idx = config, 0
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _storage(self):
        from optuna.storages import RDBStorage

        url = self.conf.storage or os.environ.get(STORAGE_ENV) or f"sqlite:///{Path.cwd() / 'optuna.db'}"
        if why := foreign_sqlite(url):  # Optuna would add its tables to someone's own database
            refuse(f"the Optuna storage {hide(url)}: {why}; it is left as it is: give a new file or a study's")
        interval = self.conf.heartbeat_s
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}  # workers wait for the lock
        for attempt in range(20):
            try:
                storage = RDBStorage(url, engine_kwargs=engine, heartbeat_interval=interval, grace_period=3 * interval)
                return url, storage
            except Exception as exc:  # workers that start together race to create the schema: one wins, the rest retry
                if "IntegrityError" not in type(exc).__name__ and "already exists" not in str(exc) or attempt == 19:
                    refuse(f"cannot open the Optuna storage at {hide(url)} ({first_line(exc)}); give "
                           f"hydra.sweeper.storage or {STORAGE_ENV} a database URL (sqlite:///PATH, "
                           "postgresql+psycopg://USER@HOST/DB)")  # fmt: skip
                time.sleep(0.25 * (attempt + 1))
        raise AssertionError("unreachable")

    def _sampler(self, number: int):
        """The sampler for trial `number`, seeded with sampler.seed + number: one worker draws the same trials every
        time, and workers sharing the study never draw the same (a shared seed would repeat every draw)."""
        import optuna

        seed = None if self.conf.sampler.seed is None else self.conf.sampler.seed + number
        if self.conf.sampler.name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.conf.sampler.n_startup_trials)
        return optuna.samplers.RandomSampler(seed=seed)

    def _study(self, arguments: list[str]):
        import optuna

        parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in self.conf.params.items()])
        parsed += OverridesParser.create().parse_overrides(arguments)
        space = {o.get_key_element(): distribution(o) for o in parsed if o.is_sweep_override()}
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        if not space:
            raise ValueError("an Optuna sweep needs a search space: hydra.sweeper.params or a key=a,b override")
        keyed = [o.input_line for o in parsed if o.is_sweep_override()]
        key = study_key(keyed, fixed, self.conf, trial_inputs(self.config))
        name = f"{self.conf.study_name or 'sweep'}-{key}"
        url, storage = self._storage()
        sampler = self._sampler(0)
        from imgclf.training.pruning import make_pruner  # the rule the jobs apply, built the same way

        pruner = make_pruner(self.conf.pruner)
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            direction=self.conf.direction,
            load_if_exists=True,
        )
        log.info("Optuna study %s in %s: %d trials so far", name, hide(url), len(study.trials))
        return study, url, space, fixed

    def sweep(self, arguments: list[str]) -> Any:
        import optuna

        from imgclf.tracking import sweeps

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, since 2.9
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        study, url, space, fixed = self._study(arguments)
        os.environ[STORAGE_ENV], os.environ[STUDY_ENV] = url, study.study_name
        os.environ[PRUNER_ENV] = self.conf.pruner
        sweeps.join_study_parent(self.config, study)
        returns = []
        while (trial := self._next_trial(study)) is not None:
            study.sampler = self._sampler(trial.number)  # TPE keeps no state but its RNG: the history is the study's
            values = {key: suggest(trial, key, dist) for key, dist in space.items()}
            overrides = [*fixed, *(f"{k}={v}" for k, v in values.items())]
            overrides.append(f"++hydra.job.env_set.{TRIAL_ENV}={trial._trial_id}")
            # the job's folder: numbered after the trials before it, never a finished one's (a rerun with the same
            # hydra.sweep.dir started again at 0 and replaced their models and reports)
            self.job_idx = max(self.job_idx, trial.number)
            while (Path(str(self.config.hydra.sweep.dir)) / str(self.job_idx)).exists():
                self.job_idx += 1
            try:
                with Heartbeat(study._storage, trial._trial_id, self.conf.heartbeat_s):
                    [ret] = self.launcher.launch([overrides], initial_job_idx=self.job_idx)
            except BaseException:  # interrupted here: the trial is failed now, not left RUNNING until it goes stale
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            returns.append(ret)
            self._tell(study, trial, ret)
        self._write_results(study)
        return returns

    def _counted(self, study) -> tuple[int, int]:
        """(trials that use the budget, of which RUNNING): finished, pruned, failed by their job, and running."""
        from optuna.storages import fail_stale_trials
        from optuna.trial import TrialState

        fail_stale_trials(study)  # a dead worker's trial: FAILED, without FAILED_BY_JOB, so its budget is asked again
        self._fail_unbeaten(study)
        counted = running = 0
        for t in study.get_trials(deepcopy=False):
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or FAILED_BY_JOB in t.user_attrs:
                counted += 1
            elif t.state == TrialState.RUNNING and SURPLUS not in t.user_attrs:
                counted, running = counted + 1, running + 1
        return counted, running

    def _fail_unbeaten(self, study) -> None:
        """A worker killed between asking a trial and its first heartbeat leaves it RUNNING with no heartbeat, which
        Optuna's stale check never fails: a RUNNING trial still without BEATING after the grace period is failed
        here (a live worker sets it milliseconds after asking)."""
        import datetime

        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        limit = datetime.datetime.now() - datetime.timedelta(seconds=3 * self.conf.heartbeat_s)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if BEATING in t.user_attrs or SURPLUS in t.user_attrs or not t.datetime_start or t.datetime_start > limit:
                continue
            with contextlib.suppress(UpdateFinishedTrialError):  # another worker failed it first
                study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)

    def _next_trial(self, study):
        """A trial to run, or None when the study's n_trials are done; waits while only other workers' running
        trials hold the rest of the budget (one may die, and its budget come back)."""
        from optuna.trial import TrialState

        while True:
            counted, running = self._counted(study)
            if counted < self.conf.n_trials:
                trial = study.ask()
                study._storage.record_heartbeat(trial._trial_id)  # from its first moment: a worker killed now fails it
                trial.set_user_attr(BEATING, True)
                before = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
                kept = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
                taken = sum(
                    t.state in kept or FAILED_BY_JOB in t.user_attrs for t in before if SURPLUS not in t.user_attrs
                )
                if taken < self.conf.n_trials:
                    return trial
                trial.set_user_attr(SURPLUS, True)  # another worker took the last slot
                study.tell(trial, state=TrialState.FAIL)
                continue
            if running == 0:
                return None
            time.sleep(min(self.conf.heartbeat_s, 5))

    def _tell(self, study, trial, ret) -> None:
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        attrs = study._storage.get_trial(trial._trial_id).user_attrs
        value = ret.return_value if ret.status == JobStatus.COMPLETED else None
        if ret.status == JobStatus.COMPLETED and PRUNED_AT in attrs:
            study.tell(trial, state=TrialState.PRUNED)
            log.info("trial %d pruned after epoch %d", trial.number, attrs[PRUNED_AT])
        elif isinstance(value, int | float) and math.isfinite(value):
            study.tell(trial, float(value))
        else:  # the job failed, or its config was refused (the stage returns no objective)
            trial.set_user_attr(FAILED_BY_JOB, True)
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, ret._return_value)

    def _write_results(self, study) -> None:
        """optimization_results.yaml in the sweep dir, as Hydra's Optuna sweeper writes it (the parent run logs it)."""
        from optuna.trial import TrialState

        done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if not done:
            return
        best = study.best_trial
        results = {
            "name": "optuna",
            "study": study.study_name,
            "best_params": best.params,
            "best_value": best.value,
            "trials": {s.name.lower(): sum(t.state == s for t in study.trials) for s in TrialState},
        }
        out = Path(self.config.hydra.sweep.dir)
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), out / "optimization_results.yaml")
        plot_study(study, out)


def plot_study(study, out: Path) -> None:
    """Optuna's optimisation history and, once there are enough finished trials, its parameter importances, as PNGs
    (Optuna's matplotlib plots) for the parent run."""
    import optuna
    from optuna.visualization import matplotlib as plots

    from imgclf.plots import save_figure

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    save_figure(plots.plot_optimization_history(study).figure, out / "optuna_history.png")
    if len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE])) >= 2 and len(study.best_trial.params) > 1:
        save_figure(plots.plot_param_importances(study).figure, out / "optuna_importance.png")
