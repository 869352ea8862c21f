"""The workspace's params.yaml as overrides of conf/, so that ad-hoc commands follow the applied experiment.

`dvc exp run -S data=folder -S data.path=...` writes its composition to params.yaml; `imgclf train`, `imgclf lr-find`
and `python -m imgclf.stages.<stage>` compose conf/ (groups, sweeps and Hydra's settings live there). Between the
two, `workspace_overrides` finds the group choices and keys that turn conf/'s default into params.yaml (each group's
closest option, then the keys that still differ), checks that composing them gives params.yaml exactly, and the
stage entry point puts them before the user's own overrides. Where they cannot re-create it (conf/ edited since),
the command stops with one line instead of running on a config nobody asked for.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import GrammarParseError, InterpolationResolutionError, OmegaConfBaseException

from imgclf.config import conf_dir, config_groups, split_argv
from imgclf.credentials import secret_in_config
from imgclf.errors import BadInput, not_text, yaml_error

PARAMS = "params.yaml"
OFF = "IMGCLF_WORKSPACE"  # =0: start from conf/ alone
# groups a composition picks, data first (its defaults list picks the augment preset); experiment, sweep and
# launcher are added with + and leave no section of their own
PICKED = ("data", "augment", "model", "optim", "schedule", "finetune", "trainer", "tracking", "optimise")
REMAKE = "fix it, or write it again from conf/ (make params)"
EXPLICIT = ("--config-name", "-cn", "--config-dir", "-cd", "--config-path", "-cp")  # DVC's stages, a user's own


@contextmanager
def _composer(root: Path) -> Iterator[Callable[[Sequence[str]], tuple[dict, dict]]]:
    """compose(overrides) -> (resolved, unresolved) plain dicts, in one Hydra context, each composition once."""
    from hydra import compose, initialize_config_dir

    cache: dict[tuple[str, ...], tuple[dict, dict]] = {}

    def composed(overrides: Sequence[str]) -> tuple[dict, dict]:
        key = tuple(overrides)
        if key not in cache:
            try:
                cfg = compose(config_name="config", overrides=list(key))
            except UnicodeDecodeError as exc:
                raise not_text(conf_dir(root), exc) from None
            cache[key] = OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_container(cfg, resolve=False)
        return cache[key]

    with initialize_config_dir(str(conf_dir(root)), version_base=None):
        yield composed


def _identity(section: Any) -> Any:
    """What tells a group's options apart: its keys and the values that name it."""
    if not isinstance(section, Mapping):
        return section
    return sorted(section), [section.get(k) for k in ("name", "_target_", "strategy", "method", "preset")]


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping) and node:
        return {k: v for key, value in node.items() for k, v in _leaves(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def _distance(a: Any, b: Any) -> int:
    left, right = _leaves(a), _leaves(b)
    return sum(left.get(k, object()) != right.get(k, object()) for k in left.keys() | right.keys())


def value(v: Any) -> str:
    """A value as Hydra's override grammar reads it back: strings quoted, lists and mappings spelled out."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):  # in Hydra's quotes a backslash is literal, except a run of them before a quote or the end
        body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", v)
        return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body) + "'"
    if isinstance(v, Mapping):
        return "{" + ",".join(f"{k}:{value(x)}" for k, x in v.items()) + "}"
    return "[" + ",".join(value(x) for x in v) + "]"


def _differences(want: Mapping, have: Mapping, raw: Mapping, prefix: str = "") -> Iterable[str]:
    """Overrides turning `have` into `want`; keys that interpolate others (`raw`'s ${...}) follow by themselves."""
    for key, v in want.items():
        path = f"{prefix}{key}"
        if key not in have:
            yield f"+{path}={value(v)}"
        elif isinstance(v, Mapping) and isinstance(have[key], Mapping) and v and have[key]:
            yield from _differences(v, have[key], raw.get(key) or {}, f"{path}.")
        elif v != have[key] and "${" not in str(raw.get(key, "")):
            yield f"{path}={value(v)}"
    yield from (f"~{prefix}{key}" for key in have if key not in want)


class _PlainLoader(yaml.SafeLoader):
    """YAML without aliases: `make params` and DVC write none, and nine levels of ten aliases each are a billion
    copies, which OmegaConf makes one by one (a command that never ended)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            mark = event.start_mark
            raise BadInput(
                f"{mark.name} line {mark.line + 1}, column {mark.column + 1}: an alias (*{event.anchor}); params.yaml "
                f"holds each value written out, as `make params` and DVC write it: {REMAKE}"
            )
        return super().compose_node(parent, index)


def _load(params: Path) -> Any:
    """params.yaml as OmegaConf reads it: one line, naming the file, when it is not YAML or not a mapping (a list, a
    plain string: every stage failed on it with an AttributeError), or holds an alias."""
    try:
        with params.absolute().open(encoding="utf-8") as f:  # a file object: YAML's errors name it
            top = yaml.load(f, Loader=_PlainLoader)  # the kind of document, which OmegaConf blurs ("a" as {"a": None})
        loaded = OmegaConf.load(params) if isinstance(top, dict) else None
    except yaml.YAMLError as exc:  # stages said "while parsing a flow sequence", naming no file
        raise BadInput(f"{yaml_error(exc)}: {REMAKE}") from None
    except UnicodeDecodeError as exc:
        raise BadInput(f"{params} is not UTF-8 text ({exc.reason} at byte {exc.start}): {REMAKE}") from None
    if not OmegaConf.is_dict(loaded):
        kinds = {list: "a list", str: "a plain string", type(None): "nothing", bool: "a boolean"}
        kind = kinds.get(type(top), "a number")  # what else YAML reads at the top level
        raise BadInput(f"{params} holds {kind}, not the mapping of config sections `make params` writes: {REMAKE}")
    return loaded


def workspace_overrides(root: str | Path = ".") -> list[str]:
    """The overrides that make conf/ compose to `root`'s params.yaml ([] when it is conf/'s default or absent)."""
    params = Path(root) / PARAMS
    if not params.is_file():
        return []
    loaded = _load(params)
    if why := secret_in_config(OmegaConf.to_container(loaded, resolve=False)):  # before it is resolved and shown
        raise BadInput(f"{params}: {why}")
    try:
        want = OmegaConf.to_container(loaded, resolve=True)
    except (InterpolationResolutionError, GrammarParseError) as exc:  # a traceback from OmegaConf's depths
        said = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"{params}: {exc.full_key}: {said}; {REMAKE}") from None
    found = overrides_for(want, root)
    if found is None:
        raise BadInput(
            f"{params} cannot be re-created from conf/ (edited since it was written?); run `make params` or "
            f"the stage through DVC, or set {OFF}=0 to start from conf/ alone"
        )
    return found


def overrides_for(want: Mapping[str, Any], root: str | Path = ".") -> list[str] | None:
    """The group choices, then the keys, that make conf/ compose to the resolved config `want`; None when no
    overrides can (conf/ edited since `want` was composed)."""
    with _composer(Path(root)) as composed:
        if want == composed([])[0]:
            return []
        groups, choices = config_groups(root), []
        for group in (g for g in PICKED if g in groups and g in want):
            current = composed(choices)[0].get(group)
            if _identity(want[group]) == _identity(current):
                continue  # the same option: what differs is keys, below
            options = {o: composed([*choices, f"{group}={o}"])[0].get(group) for o in groups[group]}
            best = min(options, key=lambda o: _distance(want[group], options[o]))
            if options[best] != current:
                choices.append(f"{group}={best}")
        from hydra.errors import HydraException

        found = [*choices, *_differences(want, *composed(choices))]
        try:
            return found if composed(found)[0] == want else None
        except (HydraException, OmegaConfBaseException):  # a section dropped (~augment) that another interpolates
            return None


def _key(override: str) -> str:
    return re.split(r"[=]", override.lstrip("+~"), maxsplit=1)[0]


def _swept(flags: list[str], overrides: list[str], root: str | Path) -> list[str]:
    """The keys a multirun's sweep file (+sweep=models) or hydra.sweeper.params.<key>= varies; [] for one run."""
    if not any(f in ("-m", "--multirun") for f in flags):
        return []
    prefix = "hydra.sweeper.params."
    keys = [_key(o).removeprefix(prefix) for o in overrides if _key(o).startswith(prefix)]
    files = [o for o in overrides if _key(o) == "sweep"]
    if files:
        from hydra import compose, initialize_config_dir
        from hydra.errors import HydraException

        try:
            with initialize_config_dir(str(conf_dir(root)), version_base=None):
                cfg = compose(config_name="config", overrides=files, return_hydra_config=True)
        except HydraException:  # a sweep file that is not there: the override check says so in one line
            return keys
        keys += [str(k) for k in OmegaConf.select(cfg, "hydra.sweeper.params") or {}]
    return keys


def with_workspace(argv: list[str], root: str | Path = ".") -> tuple[list[str], list[str]]:
    """(argv with the workspace's overrides before the user's, those overrides): none where the command names its
    own config, adds a recipe (+experiment=, which sets keys across groups), or IMGCLF_WORKSPACE=0; the user's keys
    win, and so do the keys a sweep file varies (Hydra's sweepers let the command line beat them). A config named in
    a folder given (DVC's `--config-dir . --config-name params`) is read as params.yaml is, for a one-line error."""
    if os.environ.get(OFF) == "0" or any(a.split("=")[0] in EXPLICIT for a in argv):
        if (named := _named_file(argv)) is not None:
            _load(named)
        return argv, []
    flags, overrides = split_argv(argv)
    if any(_key(a) == "experiment" for a in overrides):
        return argv, []
    carried = workspace_overrides(root)
    mine = [_key(a) for a in overrides] + (_swept(flags, overrides, root) if carried else [])
    kept = [
        o
        for o in carried
        if not any(_key(o) == k or _key(o).startswith(f"{k}.") for k in mine)  # a group or key the user sets
    ]
    return ([*flags, *kept, *overrides] if kept else argv), kept


def _named_file(argv: list[str]) -> Path | None:
    """The file `--config-dir DIR --config-name NAME` names, when there is one: Hydra read it with a traceback for
    a NUL or a byte that is not UTF-8, and without end for nested aliases."""
    given: dict[str, str] = {}
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        flag = {"-cd": "dir", "--config-dir": "dir", "-cn": "name", "--config-name": "name"}.get(name)
        if flag and (eq or i + 1 < len(argv)):
            given[flag] = value if eq else argv[i + 1]
    if "dir" not in given or "name" not in given:
        return None
    path = Path(given["dir"]).expanduser() / given["name"]
    path = path if path.suffix == ".yaml" else path.with_name(f"{path.name}.yaml")
    return path if path.is_file() else None
