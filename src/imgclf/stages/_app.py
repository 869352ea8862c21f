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

from ..config import config_groups, conf_dir

log = logging.getLogger(__name__)

RUN_FILE = Path("models/run.json")  # the MLflow run of the last train stage; evaluate and export log into it


def check_choices(argv: list[str]) -> str | None:
    """Return a one-line error for a `group=option` override naming an option that does not exist."""
    if not conf_dir().is_dir():
        return None
    groups = config_groups()
    args = [a for a in argv if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except Exception as exc:  # Hydra's grammar error: keep its first line, which names the bad token
        return f"bad override: {str(exc).splitlines()[0]}"
    for ov in overrides:
        group = ov.key_or_group.lstrip("+~")
        if group not in groups or ov.is_delete():
            continue
        values = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.get_value_element_as_str()]
        for value in values:
            if value not in groups[group]:
                return f"unknown {group} '{value}'; choose one of: {', '.join(groups[group])}"
    return None


def _sigterm(signum, frame):
    # SIGTERM (dvc queue kill, a scheduler) ends the run like Ctrl-C: marked KILLED, not left RUNNING
    raise KeyboardInterrupt(f"signal {signum}")


# errors that mean "bad input or missing prerequisite": one line, no traceback, exit 1
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


def one_line_errors(task: Callable[[DictConfig], object]) -> Callable[[DictConfig], object]:
    """Turn user errors into `error: <message>` and exit 1; IMGCLF_DEBUG=1 keeps the traceback."""
    @functools.wraps(task)
    def wrapper(cfg: DictConfig):
        try:
            return task(cfg)
        except USER_ERRORS as exc:
            if os.environ.get("IMGCLF_DEBUG"):
                raise
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
    return wrapper


def stage_main(task: Callable[[DictConfig], object]) -> Callable[[], None]:
    """Wrap `task` as a Hydra app reading conf/ (or `--config-dir . --config-name params` under DVC)."""
    def main() -> None:
        error = check_choices(sys.argv[1:])
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
