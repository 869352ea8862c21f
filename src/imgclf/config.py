"""Compose conf/ the way DVC does (params.yaml), and check command-line overrides with one line per mistake.

`python -m imgclf.config [OVERRIDE ...]` prints the composition (what `make params` writes).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from imgclf.credentials import secret_override
from imgclf.errors import did_you_mean, not_text, yaml_error
from imgclf.hydra_run import (
    DVC_HYDRA,
    INFO,
    VALUED,
    fixed_folder,
    flags_error,
    grammar_error,
    group_choices,
    log_file_error,
    output_folders,
    sweep_error,
    too_many_jobs,
    unswept,
)

CONF_DIR = "conf"


def conf_dir(root: str | Path = ".") -> Path:
    """Absolute path of the project's conf/ directory."""
    return (Path(root) / CONF_DIR).resolve()


def compose(
    overrides: Sequence[str] = (), root: str | Path = ".", resolve: bool = True, hydra: bool = False
) -> DictConfig:
    """Compose conf/config.yaml with overrides, resolved (DVC's `compose_and_dump`, minus the dump); with `hydra`,
    Hydra's own settings too (`hydra.launcher`, `hydra.sweeper`: what `-m` reads), unresolved."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(conf_dir(root)), version_base=None):
        try:
            cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)
        except UnicodeDecodeError as exc:  # a traceback from Hydra's loader: a YAML error naming the file instead
            raise not_text(conf_dir(root), exc) from None
    if hydra:
        return cfg  # Hydra's config reads its runtime (${hydra:runtime.cwd}), which only a running app has
    if resolve:
        OmegaConf.resolve(cfg)
    return cfg


def params_yaml(overrides: Sequence[str] = (), root: str | Path = ".") -> str:
    """The text DVC writes to params.yaml for these overrides."""
    return OmegaConf.to_yaml(compose(overrides, root))


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(Hydra's flags with their values, the overrides): argparse takes the overrides as one run of positionals."""
    flags: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        takes = arg in VALUED or (arg in ("--info", "-i") and i + 1 < len(argv) and argv[i + 1] in INFO)
        if arg.startswith("-") and not arg.startswith("~"):
            flags += argv[i : i + 2] if takes else [arg]
            i += 2 if takes else 1
        else:
            overrides.append(arg)
            i += 1
    return flags, overrides


def no_conf_here(argv: Sequence[str], root: str | Path = ".") -> str | None:
    """Why a stage cannot compose here: no conf/ in this folder and no --config-dir given (a command typed in the
    wrong folder), or None."""
    if conf_dir(root).is_dir() or any(a.split("=")[0] in ("-cd", "--config-dir") for a in argv):
        return None
    return (
        f"no conf/ in {Path(root).resolve()}: run imgclf from the project's root (the folder holding dvc.yaml and "
        "conf/), or give --config-dir"
    )


def config_groups(root: str | Path = ".") -> dict[str, list[str]]:
    """Config groups of conf/ and their options: {"model": ["alexnet", "vgg16"], ...}."""
    base = conf_dir(root)
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))  # a shared base lives outside (conf/model_base.yaml)
        for d in sorted(base.iterdir())
        if d.is_dir()
    }


def check_overrides(argv: Sequence[str], root: str | Path = ".") -> str | None:
    """A one-line error for an override naming a missing option or key, else None.

    Group choices are checked against conf/'s files (every value of a sweep); keys by one Hydra compose, whose
    multi-line error is turned into one line listing the keys that exist.
    """
    return checked_config(argv, root)[0]


def checked_config(
    argv: Sequence[str], root: str | Path = ".", *, stage: bool = False
) -> tuple[str | None, DictConfig | None]:
    """no_conf_here's or check_overrides' error, and the config it composed, resolved: None when it composed none
    (an error, a DVC run reading params.yaml) or for a sweep (-m: each job's config differs, and a job refused is a
    FAILED run); a stage checks its values with it before Hydra makes a run folder. `stage`: a stage's own command
    line, where a list without -m is a mistake (`imgclf check -S a=1,2` checks DVC's grid)."""
    flags, given = split_argv(argv)
    error = no_conf_here(argv, root) or secret_override(argv) or flags_error(flags, _config_dirs(argv, root))
    if error := error or log_file_error(given):  # Hydra's log moved onto a file of the user's
        return error, None
    bare = [a for a in given if "=" not in a and not a.startswith("~")]
    if bare:  # Hydra would say it in four lines (`imgclf check`: a traceback)
        return _bare(bare[0]), None
    if escaped := [a for a in given if "\\${" in a]:  # resolved once it is text ${x}, which the next read resolves
        return f"{escaped[0]}: a value cannot hold ${{...}} as text, escaped or not (it would be resolved)", None
    home, root = root, _given_root(argv, root)
    if root is None or not conf_dir(root).is_dir() or any(f.split("=")[0] in ("-cn", "--config-name") for f in flags):
        return _named_config(given, home), None
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    args = [a for a in argv if ("=" in a or a.startswith("~")) and not a.startswith("-")]  # ~KEY: a deletion
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(args)
    except HydraException as exc:  # Hydra's grammar error: its first line names the bad token
        return grammar_error(parser, args, exc), None
    multirun = bool({"-m", "--multirun"} & set(split_argv(argv)[0]))
    swept = [text for text, ov in zip(args, parsed) if ov.is_sweep_override()]
    modes = [f for f in split_argv(argv)[0] if f.split("=")[0] in MODES]
    if stage and (len(modes) > 1 or (swept and not multirun)):  # Hydra's traceback, or its lines
        return (
            f"{' and '.join(modes)}: give one of {', '.join(MODES[::2])}" if len(modes) > 1 else unswept(swept[0])
        ), None
    error, kept, own, others = _kept(args, parsed, config_groups(root))
    error = error or (None if multirun else too_many_jobs(args, parsed))  # -m: with the sweeper's params, below
    error, cfg = (error, None) if error else _composed(kept, others, root)
    if error:
        return error, None
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.resolve(cfg)  # an interpolation the overrides broke (${oops}) fails here, not in a stage
    except OmegaConfBaseException as exc:
        if "HydraConfig was not set" in str(exc):  # ${hydra:job.name}: only the running app resolves it
            return (
                _check_hydra(kept, own, root, (args, parsed) if multirun else None) if own or multirun else None
            ), None
        dropped = [a for a in args if a.startswith("~")]
        why = f" ({dropped[0]} drops a key the config reads: keep it or override the key reading it)" if dropped else ""
        return f"bad interpolation: {str(exc).splitlines()[0]}{why}", None
    hydra = _check_hydra(kept, own, root, (args, parsed) if multirun else None) if own or multirun else None
    return hydra, (None if swept or multirun else cfg)


MODES = ("-m", "--multirun", "--run", "-r", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")  # Hydra's: one


def _bare(text: str) -> str:
    return f"bad override {text!r}: give KEY=VALUE (trainer.epochs=5), +KEY=VALUE to add a key, ~KEY to drop one"


MAX_KEY = 250  # MLflow's longest param name: every key of the config is logged as one


def _named_config(given: list[str], home: str | Path) -> str | None:
    """A config named (-cn, or a --config-dir not conf/): DVC's runs read params.yaml, already composed (and
    checked) by DVC; Hydra's folders are checked all the same, from conf/'s Hydra settings and the overrides."""
    own = [o for o in given if o.lstrip("+").startswith("hydra.")]
    checked = set(own) - set(DVC_HYDRA) and conf_dir(home).is_dir()
    return _check_hydra([], own, home, None) if checked else None


def _kept(args: list[str], parsed: list, groups: dict[str, list[str]]) -> tuple[str | None, list[str], list[str], list]:
    """(an unknown group option, the config's overrides to compose, Hydra's own: hydra/launcher=joblib,
    hydra.launcher.n_jobs=2, a swept group's other options as (its place in the overrides, the options)): each group
    choice checked against conf/'s files, a swept group kept at its first option, a swept key with a neutral value."""
    kept: list[str] = []
    own: list[str] = []
    others: list[tuple[int, list[str]]] = []
    for text, ov in zip(args, parsed):
        key, prefix = ov.key_or_group, text[: len(text) - len(text.lstrip("+~"))]
        if len(key) > MAX_KEY:  # Hydra looks for a file of that name first: the system's "File name too long"
            return f"an override's key of {len(key)} characters ({key[:40]}...): at most {MAX_KEY}", [], [], []
        if key.startswith("hydra"):
            if key == "hydra.job.chdir" and str(ov.value()).lower() == "true":
                why = "hydra.job.chdir=true: stages read and write paths from the project's root (data/, models/)"
                return why, [], [], []
            own += [] if ov.is_sweep_override() else [text]
            continue
        if key in groups and not ov.is_delete():
            values = group_choices(ov, groups[key])
            if values is None:
                why = f"bad override {text!r}: a group takes its options as a list (a,b) or glob(*), not interval()"
                return why, [], [], []
            bad = [v for v in values if v not in groups[key]]
            if bad:
                hint = did_you_mean(bad[0], groups[key], f"{key}=")
                return f"unknown {key} '{bad[0]}'{hint}; choose one of: {', '.join(groups[key])}", [], [], []
            others += [(len(kept), values[1:])] if len(values) > 1 else []
            kept.append(f"{prefix}{key}={values[0]}")
        else:  # a swept key is checked for existence with a neutral value
            kept.append(f"{prefix}{key}=null" if ov.is_sweep_override() else text)
    return None, kept, own, others


def _composed(kept: list[str], others: list[tuple[int, list[str]]], root: str | Path) -> tuple[str | None, Any]:
    """(one line, None) when the overrides do not compose, else (None, the config, unresolved). A sweep over a group
    composes each of its other options too, with the rest of the overrides (any other swept group at its first
    option), so that a key one option lacks (`-m data=folder,digits data.path=X`) is one line before the first job
    rather than Hydra's lines after it."""
    import yaml
    from hydra.errors import HydraException

    try:
        cfg = compose(kept, root, resolve=False)
        for at, options in others:
            for option in options:
                trial = [*kept[:at], f"{kept[at].split('=')[0]}={option}", *kept[at + 1 :]]
                try:
                    compose(trial, root, resolve=False)
                except HydraException as exc:
                    return f"{trial[at].lstrip('+')}: {_explain(str(exc), trial, root)}", None
    except HydraException as exc:
        return _explain(str(exc), kept, root), None
    except yaml.YAMLError as exc:  # a file of conf/ that is not YAML: where, not Hydra's 100 lines
        return yaml_error(exc), None
    return None, cfg


def _check_hydra(kept: list[str], own: list[str], root: str | Path, sweep: tuple[list, list] | None) -> str | None:
    """Hydra's own settings composed with Hydra's config, as `-m` composes them before the first job: a launcher or
    sweeper that does not exist, a key it lacks or a value of the wrong type, in one line; the folders Hydra would
    make; with `sweep` (-m's overrides, parsed), the whole sweep as its sweeper lists it."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = [*kept, *own]
    try:
        cfg = compose(overrides, root, hydra=True)
    except AssertionError:  # OmegaConf's, setting a key under a null (hydra.sweeper.params.x with the basic sweeper)
        return f"{' '.join(own)}: Hydra's config has no such key here (the chosen sweeper or launcher lacks it)"
    except (HydraException, OmegaConfBaseException) as exc:
        message = str(exc)
        missing = re.search(r"Could not find '(hydra/[^']+)/([^']+)'", message)
        if missing:
            options = re.findall(r"^\t(\S+)$", message, re.M)
            hint = did_you_mean(missing.group(2), options, f"{missing.group(1)}=")
            return f"unknown {missing.group(1)} '{missing.group(2)}'{hint}; choose one of: {', '.join(options)}"
        merging = re.match(r"Error merging override (\S+)", message)
        if merging:  # a value of the wrong type: the cause Hydra chains says which
            cause = str(exc.__cause__ or "").strip().splitlines() or ["a value of another type"]
            typed = re.search(r"could not be converted to (\w+)|is not a valid (\w+)", cause[0])
            kinds = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "bool": "true or false"}
            kind = typed and (typed.group(1) or typed.group(2))
            why = kinds.get(kind, kind) if kind else cause[0]
            return f"{merging.group(1)} is not valid: {why}"
        return _explain(message, overrides, root, hydra=True)
    folders: dict[str, str | None] = {}
    for key in ("run.dir", "sweep.dir", "sweep.subdir", "output_subdir"):
        try:
            value = OmegaConf.select(cfg.hydra, key, throw_on_resolution_failure=True)
        except OmegaConfBaseException:  # a value only the running app has (${hydra:job.num}, the default subdir)
            value = "0" if key == "sweep.subdir" else None  # a job's folder: any job's stands for them all
            if key in ("run.dir", "sweep.dir"):  # its fixed folders are made whatever the rest turns out to be
                group, _, name = key.partition(".")
                value = fixed_folder(str(OmegaConf.to_container(cfg.hydra[group], resolve=False)[name]))
                folders["output_subdir"] = None  # under a folder only the app knows: the app's own check
        folders.setdefault(key, None if value is None else str(value))
    if sweep is None:
        return output_folders(folders, own, root)
    sweeper, launcher = cfg.hydra.sweeper, cfg.hydra.launcher
    node = sweeper.get("params")
    params = {str(k): str(v) for k, v in OmegaConf.to_container(node).items()} if node is not None else {}
    return output_folders(folders, own, root, multirun=True) or sweep_error(
        str(sweeper._target_), params, *sweep, batch=sweeper.get("max_batch_size"), jobs=launcher.get("n_jobs")
    )


def _config_dirs(argv: Sequence[str], root: str | Path) -> list[Path]:
    """Where Hydra looks for the primary config: conf/ and each --config-dir given."""
    flags = split_argv(argv)[0]
    given = [f.split("=", 1)[1] for f in flags if f.startswith(("--config-dir=", "-cd="))]
    given += [flags[i + 1] for i, f in enumerate(flags[:-1]) if f in ("--config-dir", "-cd")]
    return [conf_dir(root), *(Path(root, g).expanduser() for g in given)]


def _given_root(argv: Sequence[str], root: str | Path) -> Path | None:
    """The project root whose conf/ the command composes: `--config-dir .../conf` names it from anywhere (None for
    another folder, which only Hydra reads), else `root`."""
    given = _config_dirs(argv, root)[1:]
    if not given:
        return Path(root)
    folder = given[-1].resolve()
    return folder.parent if folder.name == CONF_DIR else None


def _explain(message: str, overrides: list[str], root: str | Path, hydra: bool = False) -> str:
    """Hydra's "Could not override 'a.b'" as one line naming the keys that `a` has (`hydra`: a key of Hydra's own)."""
    found = re.search(r"Could not override '([^']+)'|Could not delete from config\. '([^']+)' does not exist", message)
    if "Could not load 'model/_base'" in message:  # a model file of the user's, from before the base moved
        return f"{message.splitlines()[0]} The keys every model starts from are in conf/model_base.yaml now: " + (
            "write `- /model_base@_here_` in its defaults list instead of `- _base`"
        )
    merging = re.match(r"Error merging override (([^=\s]+)=\S*)", message)  # a list for a mapping, or the reverse
    if merging and (cfg := _without_unknown(overrides, merging.group(2), root, hydra)) is not None:
        text, key, node = merging.group(1), merging.group(2), OmegaConf.select(cfg, merging.group(2))
        if isinstance(node, DictConfig):
            return f"{text} is not valid: {key} is a mapping ({', '.join(node)}): set {key}.KEY=... or drop ~{key}.KEY"
        return f"{text} is not valid: {key} is a list: give its values as [a,b]"
    if not found:
        return message.splitlines()[0]
    key = found.group(1) or found.group(2)
    cfg = _without_unknown(overrides, key, root, hydra)
    if cfg is None:
        return message.splitlines()[0]
    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or part not in node:
            parent = ".".join(parts[:i]) or "the config"
            valid = ", ".join(node.keys()) if isinstance(node, DictConfig) else "no sub-keys"
            prefix = ".".join(parts[:i]) + "." if i else ""
            hint = did_you_mean(part, node.keys(), prefix) if isinstance(node, DictConfig) else ""
            new = isinstance(node, DictConfig) and ("_target_" in node or parent == "augment.ops")  # kwargs take +
            advice = f" (use +{key}=... to add a new key)" if new and not (hint or found.group(2) or hydra) else ""
            return f"unknown key '{key}'{hint}; {parent} has: {valid}{advice}"
        node = node[part]
    if found.group(2):  # Hydra cannot delete a key whose value is null
        return f"~{key}: the stages read every key of conf/, so it cannot be dropped; set it instead ({key}=null)"
    return message.splitlines()[0]


def _without_unknown(overrides: list[str], key: str, root: str | Path, hydra: bool) -> DictConfig | None:
    """The config composed without `key`'s override, and without any other a key of which is unknown too (two typos:
    the first is named), or None when it does not compose for another reason."""
    from hydra.errors import HydraException

    dropped = {key}
    for _ in overrides:
        kept = [o for o in overrides if o.lstrip("+~").partition("=")[0] not in dropped]
        try:
            return compose(kept, root, resolve=False, hydra=hydra)
        except HydraException as exc:
            found = re.search(r"Could not override '([^']+)'|'([^']+)' does not exist", str(exc))
            if not found or (found.group(1) or found.group(2)) in dropped:
                return None
            dropped.add(found.group(1) or found.group(2))
    return None


def missing_for_dvc(cfg: DictConfig, root: str | Path = ".") -> str | None:
    """One line when dvc.yaml reads a key (`${model.inputs[0]}`) that this config lacks, else None: DVC would stop
    on it with "failed to parse 'stages.train.deps'" before any stage runs (a new conf/model/ file without
    `- /model_base@_here_`, say)."""
    import yaml

    dvc_yaml = Path(root) / "dvc.yaml"
    if not dvc_yaml.is_file():
        return None
    text = dvc_yaml.read_text()
    own = {name for var in yaml.safe_load(text).get("vars") or () if isinstance(var, dict) for name in var}
    for key in dict.fromkeys(re.findall(r"\$\{([^}]+)\}", text)):
        if key.split(".")[0].split("[")[0] not in own and OmegaConf.select(cfg, key) is None:
            return f"dvc.yaml reads ${{{key}}}, which this config does not set (a conf/ file missing its defaults?)"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """params.yaml's text on stdout, or one line saying what in the overrides or conf/ does not compose. `make params`
    runs `imgclf check` first: the values every stage would refuse (this module sits below the typed options)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    error = check_overrides(argv)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    cfg = compose(argv)  # the values themselves: `imgclf check`, which make params runs first
    error = missing_for_dvc(cfg)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(OmegaConf.to_yaml(cfg))  # params_yaml's text, composed once
    return 0


if __name__ == "__main__":
    sys.exit(main())
