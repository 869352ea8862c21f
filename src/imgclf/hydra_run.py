"""Hydra's run as the stages see it (single run or sweep, its folder, the overrides it was given), Hydra's own
settings checked before Hydra acts on them (the folders it makes, how many jobs a sweep lists), and a refused run's
folder taken back."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from imgclf.targets import remove_empty, unmakeable_folder

# Hydra's command-line flags (its argparse parser), those taking a value, and --info's optional values
FLAGS = ("-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "--resolve", "-p", "--package", "-r", "--run",
         "-m", "--multirun", "-sc", "--shell-completion", "-cp", "--config-path", "-cn", "--config-name", "-cd",
         "--config-dir", "--experimental-rerun", "-i", "--info")  # fmt: skip
VALUED = ("-c", "--cfg", "-p", "--package", "--experimental-rerun", "-cd", "--config-dir", "-cn", "--config-name",
          "-cp", "--config-path")  # fmt: skip
INFO = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def flags_error(flags: list[str], config_dirs: list[Path]) -> str | None:
    """One line for a flag Hydra would answer with its usage, many lines or a traceback: a flag it does not have (a
    bare `-` too), --config-name naming no config in `config_dirs`, --config-path (the stages read conf/), and
    --experimental-rerun, which unpickles a file (a crafted one runs code: imgclf reads no file as code)."""
    i = 0
    while i < len(flags):
        name, eq, value = flags[i].partition("=")
        if name not in FLAGS:
            return (f"unknown flag {flags[i]!r}: an override is KEY=VALUE; Hydra's flags are -m, --cfg job, --info, "
                    "-cd DIR, -cn NAME, ... (--hydra-help lists them)")  # fmt: skip
        if name in VALUED and not eq:
            i, value = i + 1, flags[i + 1] if i + 1 < len(flags) else ""
        elif name in ("-i", "--info") and i + 1 < len(flags) and flags[i + 1] in INFO:
            i += 1
        if name == "--experimental-rerun":
            return (f"{name} is not supported: it unpickles a file, and a crafted one runs code; rerun a run with "
                    "imgclf reproduce RUN_ID, or give the overrides its .hydra/overrides.yaml lists")  # fmt: skip
        if name in ("-cp", "--config-path"):  # relative to the stage's module: Hydra's lines, whatever is given
            return f"{name} is not supported: the stages read conf/ in the project's root; -cd DIR adds a folder"
        if name in ("-cn", "--config-name"):
            names = sorted({p.stem for d in config_dirs if d.is_dir() for p in d.glob("*.yaml")})
            if value.removesuffix(".yaml") not in names:
                return f"{name} {value}: no such config in {', '.join(map(str, config_dirs))}; give one of: " + (
                    ", ".join(names) or "none there"
                )
        i += 1
    return None


def grammar_error(parser, args: Sequence[str], exc: Exception) -> str:
    """Hydra's grammar error in one line, naming the override it is about and how to quote a value."""
    from hydra.errors import HydraException

    for text in args:
        try:
            parser.parse_overrides([text])
        except HydraException as own:
            skip = ("See https", "^", "Error parsing override", "LexerNoViableAltException")
            said = [
                line.strip() for line in str(own).splitlines() if line.strip() and not line.strip().startswith(skip)
            ]
            why = said[0].split(" expecting")[0] if said else "a character Hydra's grammar does not take"
            key, _, value = text.partition("=")
            quoted = "a value holding ~ = , [ ] { } ( ) or spaces goes in quotes"
            return f"bad override {text!r} ({why}): {quoted}, {key}='{value}'"
    return f"bad override: {str(exc).splitlines()[0]}"


def unswept(text: str) -> str:
    key, _, value = text.partition("=")
    return f"{text} lists values: add -m to run a job for each, or quote a value holding a comma: {key}='{value}'"


def group_choices(ov, options: list[str]) -> list[str] | None:
    """The options a group override names (a glob's, matched against conf/'s files); None for an interval."""
    if not ov.is_sweep_override():
        return [ov.get_value_element_as_str()]
    if ov.is_interval_sweep():
        return None
    if type(ov.value()).__name__ == "Glob":
        return ov.value().filter(options) or [f"glob({','.join(ov.value().include)})"]
    return list(ov.sweep_string_iterator())


COMPLETION = ("install", "uninstall", "query")
SHELLS = ("bash", "fish", "zsh")


def help_or_completion(flags: list[str], given: list[str]) -> tuple[str | None, list[str] | None]:
    """(an error, the arguments for Hydra) for what composes no job: -sc (shell completion) takes one of
    install|uninstall|query=SHELL and nothing else; --hydra-help shows Hydra's help, which Hydra composes without the
    app's config, so only Hydra's own overrides (hydra/launcher=joblib) are kept. (None, None) for anything else."""
    names = {f.split("=")[0] for f in flags}
    if names & {"-sc", "--shell-completion"}:
        asked = [o for o in given if o.partition("=")[0] in COMPLETION and o.partition("=")[2] in SHELLS]
        if len(given) != 1 or not asked:
            return f"{' '.join(given) or 'nothing'}: -sc takes one of {'|'.join(COMPLETION)}={'|'.join(SHELLS)}", None
        return None, [*flags, *given]
    if "--hydra-help" in names:
        return None, [*flags, *(o for o in given if o.lstrip("+~").startswith("hydra"))]
    return None, None


# what dvc.yaml's stages give Hydra (`app` in its vars): a run in the stage's folder, nothing of Hydra's written
DVC_HYDRA = ("hydra.run.dir=.", "hydra.output_subdir=null")
LOG_FILE = re.compile(r"[+~]*hydra\.(job_logging|hydra_logging)\.handlers\.[^.=]+\.(filename|mode)(=|$)")


def fixed_folder(raw: str) -> str | None:
    """The folders of a Hydra path before its first interpolation (`/data/${hydra:job.name}`: /data), or None."""
    return raw.split("${", 1)[0].rpartition("/")[0] or None


def log_file_error(overrides: list[str]) -> str | None:
    """One line for a log file moved out of the run's folder, or opened to truncate: Hydra would write (or empty) a
    file the run did not make, README.md or conf/config.yaml say, and a refused run would take it back as its own."""
    moved = next((o for o in overrides if LOG_FILE.match(o)), None)
    return moved and (
        f"{moved}: a stage logs to its run folder's <stage>.log; choose the folder with hydra.run.dir, or no file "
        "with hydra/job_logging=stdout"
    )


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def output_root() -> Path:
    """Project root for single runs (the paths dvc.yaml declares); the job's own dir in a sweep."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if is_multirun() else Path(".")


def overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


_PRESENT: set[Path] | None = None  # what was there before Hydra, in a run folder the command line gave


def note_run_folder(argv: list[str]) -> None:
    """Before Hydra starts: with hydra.run.dir given (a folder that may be there already), what exists of the run
    folder, the folders above it, its output_subdir with Hydra's files and its logs, so that a refused run takes back
    only what Hydra made for it."""
    global _PRESENT
    given = {a.partition("=")[0].lstrip("+"): a.partition("=")[2] for a in argv if a.lstrip("+").startswith("hydra.")}
    folder, subdir = given.get("hydra.run.dir"), given.get("hydra.output_subdir", ".hydra")
    if folder is None or "${" in folder + subdir:
        _PRESENT = None
        return
    run = Path(folder.strip("'\""))
    inside = run / subdir.strip("'\"") if subdir not in ("null", "") else run
    candidates = [run, *run.parents, inside, *(inside / n for n in HYDRA_FILES), *run.glob("*.log")]
    _PRESENT = {_norm(p) for p in candidates if p.exists() or p.is_symlink()}


def run_folder_guard() -> Callable[[], None]:
    """Called as a single run's task starts: returns what takes back the files Hydra wrote for it when the run is
    refused (a user error): its output_subdir's files, the job's log when it was empty as the task started (nothing
    of an earlier run's in it), and the folders left empty up to the working directory; in a hydra.run.dir given, only
    what note_run_folder did not find there before. A sweep's jobs keep theirs: a refused job is a FAILED run whose
    record they are."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or is_multirun():
        return lambda: None
    hydra = HydraConfig.get()
    present: set[Path] = set()
    if any(o.partition("=")[0].lstrip("+") == "hydra.run.dir" for o in hydra.overrides.hydra):
        if _PRESENT is None:
            return lambda: None  # a folder only the running app names (${...}): what was there is not known
        present = _PRESENT
    folder = _norm(hydra.runtime.output_dir)
    logs = [h for h in logging.root.handlers if isinstance(h, logging.FileHandler)]
    ours = [h for h in logs if _norm(h.baseFilename).parent == folder and _empty(Path(h.baseFilename))]
    ours = [h for h in ours if _norm(h.baseFilename) not in present]
    subdir = folder / hydra.output_subdir if hydra.output_subdir is not None else None

    def take_back() -> None:
        for handler in ours:
            logging.root.removeHandler(handler)
            handler.close()
            Path(handler.baseFilename).unlink(missing_ok=True)
        for name in HYDRA_FILES if subdir is not None else ():
            if _norm(subdir / name) not in present:
                (subdir / name).unlink(missing_ok=True)
        here, made = Path.cwd().resolve(), []
        for empty in [*([subdir] if subdir else []), folder, *folder.parents]:
            resolved = empty.resolve()
            if resolved == here or resolved in here.parents or _norm(empty) in present:
                break
            made.append(empty)
        remove_empty(made)  # one that holds anything stays, and those above it

    return take_back


def _norm(path: str | Path) -> Path:
    """`path` made absolute with its `..` taken out, as Hydra names its folders (links kept: they are not resolved)."""
    return Path(os.path.abspath(path))


def _empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


# the jobs one sweep may list (Hydra's grid, `dvc exp run -S`'s queue, an Optuna sweep's choices): each is listed
# in memory before the first runs, so a typo such as range(0,1e8) would take gigabytes before anything is said
MAX_SWEEP_JOBS = 1000


def sweep_size(ov) -> int | None:
    """How many values a sweep override lists, counted without listing them; None for what is sampled or matched
    against conf/'s files (interval(), glob())."""
    value = ov.value()
    kind = type(value).__name__
    if kind == "RangeSweep":
        return max(0, math.ceil((value.stop - value.start) / value.step)) if value.step else None
    if kind == "ChoiceSweep":
        return len(value.list)
    return None


def _value_error(text: str, ov, grid: bool) -> str | None:
    """A sweep no sweeper can list: a range stepping by 0, or an interval() in a grid (Hydra's basic sweeper)."""
    value = ov.value()
    if type(value).__name__ == "RangeSweep" and not value.step:
        return f"{text}: a range's step is not 0; give range(start,stop,step) with step > 0 (or < 0 to count down)"
    if grid and ov.is_interval_sweep():
        return (
            f"{text}: interval() is sampled by an Optuna sweep (+sweep=optuna_lr_wd); Hydra's grid takes a list "
            "(a,b) or range(start,stop)"
        )
    return None


def too_many_jobs(args: list[str], parsed: list, grid: bool = True, intervals: bool = False) -> str | None:
    """One line when these sweep overrides cannot be listed (a range stepping by 0), or, in a grid (`dvc exp run -S`,
    Hydra's basic sweeper), list more than MAX_SWEEP_JOBS jobs together (an Optuna sweep samples: each list alone);
    `intervals`: an interval() in a grid is refused here too (DVC's grid: `imgclf check` says it its own way)."""
    jobs, named = 1, []
    for text, ov in zip(args, parsed):
        if not ov.is_sweep_override():
            continue
        error = _value_error(text, ov, grid and intervals)
        if error:
            return error
        size = sweep_size(ov)
        if size == 0:  # range(5,1): a sweep of no job made a parent run and a folder, then failed
            return f"{text} lists no value; give range(start,stop) with start < stop (or a negative step)"
        if size is not None and (size > MAX_SWEEP_JOBS or grid):
            jobs, named = jobs * size, [*named, text]
    if jobs <= MAX_SWEEP_JOBS:
        return None
    return (
        f"{' '.join(named)} lists {jobs} jobs: a sweep lists at most {MAX_SWEEP_JOBS}; for a larger space, let an "
        "Optuna sweep sample an interval() (python -m imgclf.stages.train -m +sweep=optuna_lr_wd)"
    )


def sweep_error(
    target: str, file_params: dict[str, str], args: list[str], parsed: list, batch=None, jobs=None
) -> str | None:
    """`-m`'s whole sweep as the chosen sweeper sees it: the sweep file's params (hydra.sweeper.params, each beaten
    by the command line's value of its key) with the command line's, checked by too_many_jobs; Hydra's grid sweeper's
    `batch` (hydra.sweeper.max_batch_size: its assertion, a traceback, after the sweep's folder is made); joblib's
    `jobs` (hydra.launcher.n_jobs: 0 is joblib's ValueError, a traceback once the sweep has begun)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = {ov.key_or_group for ov in parsed}
    files = [f"{key}={value}" for key, value in file_params.items() if key not in given]
    grid = target.endswith("BasicSweeper")
    if grid and batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        return f"hydra.sweeper.max_batch_size={batch} is not valid: null (every job at once) or an integer >= 1"
    if jobs == 0:  # negative: joblib's count back from the cores (-1 each core, -2 all but one), at least 1
        return "hydra.launcher.n_jobs=0 is not valid: an integer >= 1, or -1 for one job per core (-2: all but one)"
    return too_many_jobs([*args, *files], [*parsed, *OverridesParser.create().parse_overrides(files)], grid, True)


HYDRA_FILES = {"config.yaml", "hydra.yaml", "overrides.yaml", "multirun.yaml"}  # what Hydra writes in output_subdir


def output_folders(
    folders: dict[str, str | None], own: list[str], root: str | Path, multirun: bool = False
) -> str | None:
    """One line when Hydra could not make the run's folder (hydra.run.dir or hydra.sweep.dir under a file, or where
    no folder can be made), or when hydra.output_subdir names a folder holding files Hydra did not write: Hydra would
    replace its config.yaml there (conf/ itself, say) before the stage starts. `folders`: run.dir, sweep.dir and
    output_subdir as Hydra's config resolves them (None: unset, or only the running app knows it)."""
    given = {o.partition("=")[0].lstrip("+"): o for o in own}
    run = folders.get("run.dir") or "."
    if multirun:  # a job's folder: sweep.dir/sweep.subdir
        run = str(Path(folders.get("sweep.dir") or ".", folders.get("sweep.subdir") or "0"))
    for key in ("run.dir", "sweep.dir"):
        if f"hydra.{key}" in given and folders.get(key) is not None:
            folder = Path(root) / str(folders[key])
            if why := unmakeable_folder(folder):
                return (f"{given[f'hydra.{key}']}: {folder} {why}; give a folder that can be made "
                        "(default outputs/DATE/TIME)")  # fmt: skip
    subdir = folders.get("output_subdir")
    moved = {"hydra.output_subdir", "hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir"} & set(given)
    if not moved or subdir is None:
        return None
    target = Path(os.path.normpath(Path(root) / run / subdir))  # an absolute output_subdir replaces both
    named = given.get("hydra.output_subdir") or given[sorted(moved)[0]]
    if target.is_dir():
        foreign = sorted(p.name for p in target.iterdir() if p.name not in HYDRA_FILES)
        if foreign:
            return (
                f"{named}: {target} holds files Hydra did not write ({', '.join(foreign[:3])}), "
                f"and Hydra would replace its {', '.join(sorted(HYDRA_FILES - {'multirun.yaml'}))} there: give a new "
                "folder (default .hydra), or hydra.output_subdir=null for none"
            )
    elif target.exists() or target.is_symlink():
        return f"{named}: {target} is not a folder; give a new folder (default .hydra)"
    return None
