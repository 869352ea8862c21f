"""The composed config as typed, frozen values: built once at a stage's edge (`Options.from_config`), checked there,
and passed on; the library below takes these values or plain arguments, never a config.

Each group of conf/ is one dataclass; each field says what is valid (`rule`), so the first wrong key is one line
naming the key, its value and what is valid, before any stage reads data, builds a network or writes anything.
A key a group does not have is refused the same way (a typo such as `+trainer.epoch=3` never passes silently).
Groups whose keys are arguments of a class chosen by `_target_` (optim, schedule, augment.ops, data.fetch) keep
those arguments as a mapping for Hydra's `instantiate`.

Plain frozen dataclasses rather than pydantic: no new dependency, the same objects Hydra's structured configs use,
and errors we word ourselves (pydantic's are multi-line).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclf.config import MAX_KEY  # MLflow's longest param name: each key of the config, flattened
from imgclf.credentials import sqlite_path
from imgclf.errors import BadConfig, BadInput, did_you_mean
from imgclf.options.data import FOLDERS, Data, Folders, Split
from imgclf.options.results import Evaluate, Export, LabelIssues, Optimise, Tracking
from imgclf.options.rules import (
    ANY,
    BALANCE,
    DEVICES,
    INTERPOLATIONS,
    MAX_INPUT_SIZE,
    METHODS,
    RESIZE_MODES,
    SEED,
    SOURCES,
    STRATEGIES,
    Group,
    _hints,
    refusal,
    rule,
)
from imgclf.options.training import (
    Augment,
    EarlyStopping,
    Finetune,
    LrFind,
    Model,
    Optim,
    Schedule,
    Trainer,
)

__all__ = [
    "ANY", "BALANCE", "DEVICES", "INTERPOLATIONS", "MAX_INPUT_SIZE", "METHODS", "OPTIONAL_GROUPS", "RESIZE_MODES",
    "SOURCES", "STRATEGIES", "Augment", "Data", "EarlyStopping", "Evaluate", "Export", "Finetune", "Folders", "Group",
    "LabelIssues", "LrFind", "Model", "Optim", "Optimise", "Options", "Schedule", "Split", "Tracking", "Trainer",
]  # fmt: skip


def _resolved(path: str) -> Path:
    """`path` with `~`, links and `..` followed: how two names of one folder compare equal."""
    return Path(os.path.expanduser(path)).resolve()


def _flat_keys(node: Mapping[str, Any], prefix: str = "") -> typing.Iterator[str]:
    for key, value in node.items():
        if isinstance(value, Mapping) and value:
            yield from _flat_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


@dataclass(frozen=True, kw_only=True)
class Options(Group):
    """Every group of conf/config.yaml; `config` is the resolved mapping they came from (logged and fingerprinted
    as it is)."""

    seed: int = rule(SEED)
    paths: Folders
    data: Data
    model: Model
    optim: Optim
    schedule: Schedule
    finetune: Finetune
    trainer: Trainer
    augment: Augment = field(default_factory=Augment)
    evaluate: Evaluate = field(default_factory=Evaluate)
    tracking: Tracking
    export: Export = field(default_factory=Export)
    optimise: Optimise
    lr_find: LrFind = field(default_factory=LrFind)
    label_issues: LabelIssues = field(default_factory=LabelIssues)
    config: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def check(self, where: str) -> None:
        """A folder of images that holds fetch's own output (data/<name>), or lies inside it: fetch would copy its
        last output into the new one as a class (data.path=data), or replace the folder it reads from."""
        own = _resolved(os.path.join(self.paths.data, self.data.name))  # links and .. followed
        for key in FOLDERS:
            given = getattr(self.data, key)
            folder = _resolved(given) if given is not None else None
            if folder is not None and (folder == own or own in folder.parents or folder in own.parents):
                how = "holds" if folder in own.parents else "is inside"
                raise BadInput(
                    f"data.{key}={given} {how} fetch's own output ({self.paths.data}/{self.data.name}): give the "
                    "folder your images are in, outside it"
                )
        self.check_outputs_outside(own)

    def check_outputs_outside(self, own: Path) -> None:
        """What a stage writes never lies in fetch's output: the next split would read a models/ folder (or the
        tracking store's mlruns/) among the images as a class, and the next fetch would replace it."""
        store = sqlite_path(self.tracking.uri)
        written = {f"paths.{k}": getattr(self.paths, k) for k in ("models", "reports", "checkpoints", "relabel")}
        written.update({"tracking.outbox": self.tracking.outbox, "tracking.uri": store})
        for key, given in written.items():
            if given and (own == _resolved(given) or own in _resolved(given).parents):
                raise BadInput(f"{key}={given} is inside fetch's output ({self.paths.data}/{self.data.name}), which "
                               "the next fetch replaces and split reads: give a folder outside it")  # fmt: skip

    def check_targets(self) -> Options:
        """The optimizer's and the schedule's keywords against their targets' signatures (check_keywords). It imports
        them, torch with them, so only what builds them asks: train, lr_find and `imgclf check`, before a run opens;
        fetch and split start without torch."""
        self.optim.check_target("optim")
        self.schedule.check_target("schedule")
        return self

    @classmethod
    def from_config(cls, cfg: Any) -> Options:
        """Check and type a composed config (a DictConfig or the plain mapping); BadInput names the first wrong key."""
        from omegaconf import DictConfig, OmegaConf

        config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        groups = {k: v for k, v in config.items() if k != "hydra"}
        long = next((k for k in _flat_keys(groups) if len(k) > MAX_KEY), None)
        if long:  # MLflow refuses the run's whole batch of params: a run with no config logged
            raise BadConfig(f"{long[:60]}...: a key of {len(long)} characters; MLflow takes at most {MAX_KEY}")
        known = [f.name for f in dataclasses.fields(cls) if f.name != "config"]
        unknown = [k for k in groups if k not in known]
        if unknown:
            hint = did_you_mean(unknown[0], known)
            raise BadConfig(f"unknown key '{unknown[0]}'{hint}; the config has: {', '.join(known)}")
        missing = [k for k in known if k not in groups and k not in OPTIONAL_GROUPS]
        if missing:
            raise BadConfig(f"{missing[0]} is missing from the config; compose it from conf/ (make params)")
        try:
            built = cls.build(groups, "config")
        except BadInput as exc:
            raise BadConfig(str(exc)) from None
        return dataclasses.replace(built, config=config)

    @classmethod
    def build(cls, node: Mapping[str, Any], where: str):
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "config" or f.name not in node:
                continue
            kind = _hints(cls)[f.name]
            kind = typing.get_args(kind)[0] if typing.get_origin(kind) in (typing.Union, type(int | None)) else kind
            if isinstance(kind, type) and issubclass(kind, Group):
                values[f.name] = kind.build(node[f.name], f.name) if node[f.name] is not None else None
            else:
                check = f.metadata.get("rule", ANY)
                if not check[0](node[f.name]):
                    raise BadInput(refusal(f.name, node[f.name], check))
                values[f.name] = node[f.name]
        built = cls(**values)
        built.check(where)
        return built


OPTIONAL_GROUPS = ("augment", "evaluate", "export", "lr_find")  # older configs (a run being reproduced) lack them
