"""What every stage shares: the Hydra entry point, one-line errors for bad choices, the run file."""
from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ..config import compose, config_groups, conf_dir
from ..data.download import DownloadError
from ..engine import NonFiniteLoss

log = logging.getLogger(__name__)

RUN_FILE = Path("models/run.json")  # the MLflow run of the last train stage; evaluate and export log into it


def check_overrides(argv: list[str]) -> str | None:
    """Return a one-line error for an override naming a missing option or key, else None."""
    if not conf_dir().is_dir() or "--config-name" in argv or "-cn" in argv:
        return None  # DVC runs read params.yaml, already composed (and checked) by DVC
    groups = config_groups()
    args = [a for a in argv if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except Exception as exc:  # Hydra's grammar error: keep its first line, which names the bad token
        return f"bad override: {str(exc).splitlines()[0]}"
    choices = []
    for ov in overrides:
        key = ov.key_or_group
        if key.startswith("hydra") or ov.is_delete() or ((ov.is_add() or ov.is_force_add()) and key not in groups):
            continue
        values = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.get_value_element_as_str()]
        if ov.is_add() or ov.is_force_add():  # +experiment=..., +sweep=...: checked, not composed here
            bad = [v for v in values if v not in groups[key]]
            if bad:
                return f"unknown {key} '{bad[0]}'; choose one of: {', '.join(groups[key])}"
            continue
        if key in groups:
            bad = [v for v in values if v not in groups[key]]
            if bad:
                return f"unknown {key} '{bad[0]}'; choose one of: {', '.join(groups[key])}"
            choices.append(f"{key}={values[0]}")
    cfg = compose(choices)
    for ov in overrides:
        key = ov.key_or_group
        if key in groups or key.startswith("hydra") or ov.is_add() or ov.is_force_add() or ov.is_delete():
            continue
        error = _missing_key(cfg, key)
        if error:
            return error
    return None


def _missing_key(cfg: DictConfig, key: str) -> str | None:
    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or part not in node:
            parent = ".".join(parts[:i]) or "the config"
            valid = ", ".join(node.keys()) if isinstance(node, DictConfig) else "no sub-keys"
            return f"unknown key '{key}'; {parent} has: {valid} (use +{key}=... to add a new key)"
        node = node[part]
    return None


def _sigterm(signum, frame):
    # SIGTERM (dvc queue kill, a scheduler) ends the run like Ctrl-C: marked KILLED, not left RUNNING
    raise KeyboardInterrupt(f"signal {signum}")


# errors that mean "bad input, missing prerequisite, diverged training": one line, no traceback, exit 1
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, DownloadError, NonFiniteLoss)


def one_line_errors(task: Callable[[DictConfig], object]) -> Callable[[DictConfig], object]:
    """Turn user errors into `error: <message>` and exit 1; IMGCLF_DEBUG=1 keeps the traceback.

    In a multirun, a failed job (its MLflow run marked FAILED) returns None instead: the sweeper records the
    trial as failed and the sweep goes on (Optuna counts None as a failed trial; sys.exit would end the sweep).
    """
    @functools.wraps(task)
    def wrapper(cfg: DictConfig):
        try:
            return task(cfg)
        except Exception as exc:
            if os.environ.get("IMGCLF_DEBUG"):
                raise
            if is_multirun() and int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # a DDP job must fail on every rank
                job = HydraConfig.get().job.num
                log.error("job %s failed: %s: %s", job, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                print(f"error: job {job} ({' '.join(overrides())}) failed: {exc}", file=sys.stderr)
                return None
            if not isinstance(exc, USER_ERRORS):
                raise
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
    return wrapper


def stage_main(task: Callable[[DictConfig], object]) -> Callable[[], None]:
    """Wrap `task` as a Hydra app reading conf/ (or `--config-dir . --config-name params` under DVC)."""
    def main() -> None:
        error = check_overrides(sys.argv[1:])
        if error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        signal.signal(signal.SIGTERM, _sigterm)
        path = str(conf_dir()) if conf_dir().is_dir() else None
        hydra.main(version_base="1.3", config_path=path, config_name="config")(one_line_errors(task))()
    return main


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def output_root() -> Path:
    """Project root for single runs (the paths dvc.yaml declares); the job's own dir in a sweep."""
    return Path(HydraConfig.get().runtime.output_dir) if is_multirun() else Path(".")


def overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def read_run_file(path: Path = RUN_FILE) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the train stage first (dvc repro train)")
    return json.loads(path.read_text())
