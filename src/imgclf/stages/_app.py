"""What every stage shares: the Hydra entry point, one-line errors, where outputs go in a sweep."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from imgclf.config import check_overrides, checked_config, conf_dir, split_argv
from imgclf.credentials import redact_overrides, strip_overrides
from imgclf.errors import USER_ERRORS, BadConfig, BadInput, stoppable
from imgclf.hydra_run import is_multirun, note_run_folder, overrides, run_folder_guard
from imgclf.hydra_run import output_root as output_root  # the stages' own (train, lr_find)
from imgclf.options import Options
from imgclf.stages import settle_imports
from imgclf.workspace import OFF, with_workspace

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
        try:  # the experiment applied in this workspace (params.yaml), under the user's own overrides
            argv, carried = with_workspace(sys.argv[1:])
        except (BadInput, HydraException, yaml.YAMLError) as exc:  # conf/ not composing: the override check says why
            said = str(exc) if isinstance(exc, BadInput) else check_overrides([]) or str(exc).splitlines()[0]
            print(f"error: {said}", file=sys.stderr)
            sys.exit(2)
        flags, given = split_argv(strip_overrides(argv))  # before Hydra or a line shows them; flags first: Hydra's
        bare = [f for i, f in enumerate(flags) if f in ("--info", "-i") and flags[i + 1 : i + 2] == []]  # last, or it
        flags = [f for f in flags if f not in bare]  # takes the first override as what to show
        sys.argv[1:], carried = [*flags, *given, *bare], strip_overrides(carried)  # parser takes no override before -m
        if carried:  # secrets shown as *** (a key's value, a URL's user:password): the override check refuses them next
            shown = redact_overrides(carried)
            print(f"workspace: params.yaml is conf/ plus {shown} ({OFF}=0: conf/ alone)", file=sys.stderr)
        error, cfg = checked_config(sys.argv[1:], stage=True)  # before Hydra: its errors are many lines, and exit 1
        if error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        if cfg is not None:  # its values too, before Hydra makes a run folder (outputs/DATE/TIME) for a refused one
            try:
                Options.from_config(cfg)
            except BadConfig as exc:
                print(f"error: {exc}", file=sys.stderr)
                sys.exit(1)
        note_run_folder(sys.argv[1:])  # what a hydra.run.dir given holds already: a refused run leaves it as it was
        path = str(conf_dir()) if conf_dir().is_dir() else None
        with stoppable():
            hydra.main(version_base="1.3", config_path=path, config_name="config")(one_line_errors(task, refused))()

    return main
