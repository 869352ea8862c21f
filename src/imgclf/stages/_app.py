"""What every stage shares: the Hydra entry point, one-line errors, where outputs go in a sweep."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from imgclf.config import conf_dir, split_argv
from imgclf.errors import USER_ERRORS, BadConfig, stoppable
from imgclf.hydra_run import help_or_completion, is_multirun, note_run_folder, overrides, run_folder_guard
from imgclf.hydra_run import output_root as output_root  # the stages' own (train, lr_find)
from imgclf.stages import settle_imports
from imgclf.stages._argv import checked_argv, exit_if

log = logging.getLogger(__name__)


Refused = Callable[[dict, list[str], str], None]  # (config, overrides, error): a sweep's job refused before it ran


def one_line_errors(task: Callable[[DictConfig], object], refused: Refused | None = None) -> Callable:
    """Turn UserErrors into `error: <message>` and exit 1; IMGCLF_DEBUG=1 keeps the traceback.

    In a multirun, a failed job (its MLflow run marked FAILED) returns None, a failed trial, and the sweep goes on
    (sys.exit would end it); `refused` records a job refused before it started (the train stage: a FAILED child run).
    """

    @functools.wraps(task)
    def wrapper(cfg: DictConfig):
        take_back = run_folder_guard()
        try:
            return task(cfg)
        except Exception as exc:
            if os.environ.get("IMGCLF_DEBUG"):
                raise
            tasks = int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_STEP_NUM_TASKS") or 1)  # DDP: fail all
            if is_multirun() and tasks <= 1:
                job = HydraConfig.get().job.num
                log.error("job %s failed: %s: %s", job, type(exc).__name__, (str(exc).splitlines() or [""])[0])
                print(f"error: job {job} ({' '.join(overrides())}) failed: {exc}", file=sys.stderr)
                if refused is not None and isinstance(exc, BadConfig) and isinstance(cfg, DictConfig):
                    refused(OmegaConf.to_container(cfg, resolve=True), overrides(), str(exc))
                return None
            if not isinstance(exc, USER_ERRORS):  # a bug: its traceback is what a developer needs
                raise
            take_back()  # nothing partial left: the run folder Hydra made for a refused run
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)

    return wrapper


def stage_main(task: Callable[[DictConfig], object], refused: Refused | None = None) -> Callable[[], None]:
    """Wrap `task` as a Hydra app reading conf/ (or `--config-dir . --config-name params` under DVC)."""

    def main() -> None:
        settle_imports()
        error, hydra_only = help_or_completion(*split_argv(sys.argv[1:]))  # no job: Hydra answers from conf/ alone
        exit_if(error, 2)
        if hydra_only is None:
            checked_argv()
        sys.argv[1:] = hydra_only or sys.argv[1:]
        note_run_folder(sys.argv[1:])  # what a hydra.run.dir given holds already: a refused run leaves it as it was
        path = str(conf_dir()) if conf_dir().is_dir() else None
        with stoppable():
            hydra.main(version_base="1.3", config_path=path, config_name="config")(one_line_errors(task, refused))()

    return main
