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
import math
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from imgclf.config import MAX_KEY  # MLflow's longest param name: each key of the config, flattened
from imgclf.credentials import HTTP_USERINFO, unknown_store
from imgclf.errors import BadConfig, BadInput, did_you_mean
from imgclf.paths import DATA_NAME

# Vocabularies the library dispatches on without checking again. This module imports no other part of imgclf
# (errors and credentials aside), so a stage's code deps in dvc.yaml do not grow by library modules it never runs:
# fetch reruns for an edit of fetch's code, not of the serving contract's. tests/test_options.py keeps these equal
# to what the library implements.
DEVICES = ("auto", "cpu", "cuda")  # imgclf.devices
RESIZE_MODES = ("crop", "squash")  # imgclf.contract
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")  # imgclf.contract
MAX_INPUT_SIZE = 1024  # imgclf.contract: the largest image_size and resize a served model may have
SOURCES = ("torchvision", "timm")  # imgclf.models.catalog
STRATEGIES = ("full", "gradual", "head")  # imgclf.training.finetune
BALANCE = ("none", "weights", "sampler")  # imgclf.stages._build: the loss's class weights or the balanced sampler
METHODS = ("int8_onnx", "int8_openvino", "fp16", "tensorrt", "tensorrt_int8")  # imgclf.deploy.quantize

# --- rules: (test, what is valid) ----------------------------------------------------------------------------------

Rule = tuple[Callable[[Any], bool], str]


def typed(value: Any) -> str:
    """A value as one types it in conf/ or an override: null, true, false; anything else as Python shows it."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def _quote_hint(key: str, value: Any, ok: Callable[[Any], bool]) -> str:
    """How to give a number or flag as text, when the text would do: YAML and Hydra read 2024 as a number."""
    text = typed(value)
    if isinstance(value, (int, float, bool)) and ok(text):
        return f"; quoted, it is text: {key}='{text}'"
    return ""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def integer(lo: int, hi: int | None = None) -> Rule:
    if hi is not None:
        return (lambda v: _is_int(v) and lo <= v <= hi), f"an integer from {lo} to {hi}"
    return (lambda v: _is_int(v) and v >= lo), f"an integer >= {lo}"


SEED = integer(0, 2**32 - 1)  # what NumPy's generators take


def number(lo: float, hi: float | None = None, *, above: bool = False, below: bool = True) -> Rule:
    def ok(v: Any) -> bool:
        if not _is_number(v) or v < lo or (above and v == lo):
            return False
        return hi is None or v < hi or (not below and v == hi)

    low = f"> {lo}" if above else f">= {lo}"
    return ok, f"a number {low}" + (f" and {'<' if below else '<='} {hi}" if hi is not None else "")


def optional(rule: Rule) -> Rule:
    ok, text = rule
    return (lambda v: v is None or ok(v)), f"null or {text}"


def one_of(*values: str) -> Rule:
    return (lambda v: v in values), "one of: " + ", ".join(values)


def subset_of(*values: str) -> Rule:
    return (lambda v: isinstance(v, (list, tuple)) and set(v) <= set(values)), "a list of: " + ", ".join(values)


def triple() -> Rule:
    return (lambda v: v is None or (isinstance(v, (list, tuple)) and len(v) == 3 and all(map(_is_number, v)))), (
        "null or three numbers (one per RGB channel)"
    )


BOOLEAN: Rule = ((lambda v: isinstance(v, bool)), "true or false")
TEXT: Rule = ((lambda v: isinstance(v, str) and v.strip() != ""), "a non-blank string")  # ' ' named an experiment
OPTIONAL_TEXT: Rule = optional(TEXT)
PLAIN_NAME: Rule = (  # data.name: paths.DATA_NAME
    (lambda v: isinstance(v, str) and DATA_NAME.fullmatch(v) is not None),
    "a plain name: ASCII letters, digits, '_', '-' and '.' (not first), as it names the folder data/<name>/",
)
ANY: Rule = ((lambda v: True), "anything")


def rule(check: Rule, default: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A field and what is valid for it."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"rule": check}, **kwargs)
    return field(default=default, metadata={"rule": check}, **kwargs)


# --- building a group from its mapping -----------------------------------------------------------------------------


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class Group:
    """A config group: `build` checks each key against its field's rule and refuses keys the group lacks."""

    EXTRA_KEYS = False  # True: keys beyond the fields are kept in `extra` (a data source's own settings)

    @classmethod
    def build(cls, node: Mapping[str, Any], where: str):
        if not isinstance(node, Mapping):
            raise BadInput(f"{where}={typed(node)} is not valid: a group of keys")
        names = [f.name for f in dataclasses.fields(cls) if f.name != "extra"]
        unknown = [k for k in node if k not in names]
        if unknown and not cls.EXTRA_KEYS:
            hint = did_you_mean(unknown[0], names, f"{where}.")
            raise BadInput(f"unknown key '{where}.{unknown[0]}'{hint}; {where} has: {', '.join(names)}")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                values["extra"] = {k: node[k] for k in unknown}
                continue
            key = f"{where}.{f.name}"
            if f.name not in node:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise BadInput(f"{key} is missing")
                continue
            value, kind = node[f.name], _hints(cls)[f.name]
            if isinstance(kind, type) and issubclass(kind, Group):
                values[f.name] = kind.build(value, key)
                continue
            ok, valid = f.metadata.get("rule", ANY)
            if not ok(value):
                raise BadInput(f"{key}={typed(value)} is not valid: {valid}{_quote_hint(key, value, ok)}")
            values[f.name] = tuple(value) if isinstance(value, list) else value
        built = cls(**values)
        built.check(where)
        return built

    def check(self, where: str) -> None:
        """Rules across fields; a group with none keeps this."""


# --- the groups ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Folders(Group):
    data: str = rule(TEXT)
    models: str = rule(TEXT)
    reports: str = rule(TEXT)
    checkpoints: str = rule(TEXT)
    relabel: str = rule(TEXT, "relabel")

    def check(self, where: str) -> None:
        for f in dataclasses.fields(self):
            if why := unmakeable_folder(getattr(self, f.name)):
                raise BadInput(f"{where}.{f.name}={getattr(self, f.name)!r} {why}")


def unmakeable_folder(path: str) -> str | None:
    """Why `path` cannot be a folder a stage writes into (a file, under a file, a pseudo filesystem such as /proc, no
    write access, blank), or None: it is one or can be made. Nothing is made here."""
    if not path.strip():
        return "is blank: give a folder"
    target = Path(os.path.expanduser(path)).absolute()
    if target.exists() and not target.is_dir():
        return "is a file, not a folder: give a folder (it is made when missing)"
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        return f"cannot be made: {existing} is a file"
    pseudo = existing.parts[:2] in (("/", "proc"), ("/", "sys"))  # the kernel's: writable to root, never a file
    if pseudo or not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be written: {existing} takes no files (give a folder you can write, or one that can be made)"
    return None


@dataclass(frozen=True, kw_only=True)
class Split(Group):
    val_fraction: float = rule(number(0, 1))
    test_fraction: float = rule(number(0, 1))
    seed: int = rule(SEED)
    sample_per_class: int = rule(integer(1))
    min_class_images: int = rule(integer(0), 20)

    def check(self, where: str) -> None:
        if self.val_fraction + self.test_fraction >= 1:
            raise BadInput(
                f"{where}.val_fraction + {where}.test_fraction = {self.val_fraction + self.test_fraction:g}: "
                "must be < 1 (something is left to train on)"
            )


FOLDERS = ("path", "val_path", "test_path")  # a folder source's folders of class sub-folders, when given


@dataclass(frozen=True, kw_only=True)
class Data(Group):
    EXTRA_KEYS = True  # a source's own settings (mirrors, checksums, archive): its fetch node interpolates them

    name: str = rule(PLAIN_NAME)
    fetch: Mapping[str, Any] = rule(((lambda v: isinstance(v, Mapping) and "_target_" in v), "a node with _target_"))
    split: Split
    subset: str = rule(one_of("full", "sample"), "full")
    balance: str = rule(one_of(*BALANCE), "none")
    inputs: tuple[str, ...] = rule(ANY, ())
    path: str | None = rule(OPTIONAL_TEXT, None)
    val_path: str | None = rule(OPTIONAL_TEXT, None)
    test_path: str | None = rule(OPTIONAL_TEXT, None)
    exclude: tuple[str, ...] = rule(
        (
            (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)),
            "a list of class folder names, quoted where a name is a number: data.exclude=['1']",
        ),
        (),
    )
    extra: Mapping[str, Any] = field(default_factory=dict)

    def check(self, where: str) -> None:
        if self.split.val_fraction == 0 and self.val_path is None:  # the only fixed val split is a folder's
            raise BadInput(
                f"{where}.split.val_fraction=0 leaves no validation images: give a fraction > 0 and < 1, or a folder "
                f"of them ({where}.val_path)"
            )
        _check_downloads(self.extra, where)
        if self.path is None and str(self.fetch.get("_target_", "")).endswith(".fetch_folder"):
            raise BadInput(f"{where}={self.name} needs {where}.path=/path/to/folder (one sub-folder per class)")
        for key in FOLDERS:
            path = getattr(self, key)
            if path is not None and not Path(os.path.expanduser(path)).is_dir():
                what = "is a file" if Path(os.path.expanduser(path)).exists() else "does not exist"
                shown = path if path.isprintable() else repr(path)
                raise BadInput(f"{where}.{key}={shown} {what}: give a folder with one sub-folder per class")


def _check_downloads(extra: Mapping[str, Any], where: str) -> None:
    """A source's mirrors are a list of URLs; its checksums a mapping of file name to digest (or null: none), or
    null, no checksums at all, each file then downloaded again at every fetch as one whose digest is null is."""
    mirrors = extra.get("mirrors", [])
    if not isinstance(mirrors, (list, tuple)) or not all(map(_is_url, mirrors)):
        raise BadInput(f"{where}.mirrors={typed(mirrors)} is not valid: a list of URLs (https://host/path)")
    checksums = extra.get("checksums")
    if checksums is not None and not (
        isinstance(checksums, Mapping) and all(isinstance(v, (str, type(None))) for v in checksums.values())
    ):
        raise BadInput(
            f"{where}.checksums={typed(checksums)} is not valid: a mapping of file name to md5 or sha256 digest "
            "(a digest, or the whole mapping, null: downloaded again at every fetch, unverified)"
        )


def _is_url(value: Any) -> bool:
    """A URL a download can start from: http(s) or ftp with a host, or file."""
    from urllib.parse import urlsplit

    if not isinstance(value, str) or not value.isprintable() or " " in value:
        return False
    url = urlsplit(value)
    return url.scheme == "file" or (url.scheme in ("http", "https", "ftp") and bool(url.hostname))


MIN_IMAGE_SIZE = {"alexnet": 63}  # AlexNet's five poolings leave nothing below 63 px; the others work from 32
DEFAULT_MIN_IMAGE_SIZE = 32


@dataclass(frozen=True, kw_only=True)
class Model(Group):
    name: str = rule(TEXT)
    source: str = rule(one_of(*SOURCES), "torchvision")
    pretrained: bool = rule(BOOLEAN, False)
    weights: str | None = rule(OPTIONAL_TEXT, None)
    inputs: tuple[str, ...] = rule(ANY, ())
    download: bool = rule(BOOLEAN, True)
    image_size: int | None = rule(optional(integer(1)), None)
    mean: tuple[float, ...] | None = rule(triple(), None)
    std: tuple[float, ...] | None = rule(triple(), None)
    interpolation: str | None = rule(optional(one_of(*INTERPOLATIONS)), None)
    crop_pct: float | None = rule(optional(number(0.1, 1, below=False)), None)
    resize: str = rule(one_of(*RESIZE_MODES), "crop")
    dropout: float | None = rule(optional(number(0, 1)), None)

    def check(self, where: str) -> None:
        # the network's name is checked where the library knows the names (imgclf.models.catalog, before training)
        least = MIN_IMAGE_SIZE.get(self.name, DEFAULT_MIN_IMAGE_SIZE)
        if self.image_size is not None and self.image_size < least:
            raise BadInput(
                f"{where}.image_size={self.image_size} is too small for {self.name}: it needs at least {least} px"
            )
        for key, values, low in (("mean", self.mean, 0), ("std", self.std, 1e-6)):  # as a served model's spec
            if values is not None and not all(low <= v <= 1 for v in values):
                raise BadInput(
                    f"{where}.{key}={list(values)} is not valid: 3 numbers from {low:g} to 1 (of pixel / 255)"
                )
        resized = math.floor(self.image_size / (self.crop_pct or 1)) if self.image_size else 0
        if resized > MAX_INPUT_SIZE:
            raise BadInput(f"{where}.image_size={self.image_size} with crop_pct={self.crop_pct} resizes to {resized} "
                           f"px: at most {MAX_INPUT_SIZE} (image_size / crop_pct)")  # fmt: skip
        if self.weights is not None and not Path(os.path.expanduser(self.weights)).is_file():
            what = "is a folder" if Path(os.path.expanduser(self.weights)).exists() else "does not exist"
            shown = self.weights if self.weights.isprintable() else repr(self.weights)
            raise BadInput(f"{where}.weights={shown} {what}: give a .pth, .safetensors or model.pt file")


def check_keywords(target: str, keywords: Mapping[str, Any], where: str, bound: tuple[str, ...]) -> None:
    """Refuse a `_target_` that imports nothing, a keyword it does not take (`instantiate` would fail in training,
    a FAILED run) and a flag that is no boolean (`fused=maybe` is truthy); `bound` are the arguments the stage gives."""
    import inspect

    from hydra.utils import get_object

    try:
        made = get_object(target)
    except Exception:  # Hydra's ImportError, several lines
        raise BadInput(f"{where}._target_={target} is not valid: no class or function of that name imports") from None
    try:
        params = inspect.signature(made).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): instantiate is the check
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    takes = [n for n, p in params.items() if n not in bound and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key, value in keywords.items():
        if key not in takes:
            hint = did_you_mean(key, takes, f"{where}.")
            raise BadInput(f"unknown key '{where}.{key}'{hint}; {target} takes: {', '.join(takes)}")
        default = params[key].default
        flag = isinstance(default, bool) or "bool" in str(params[key].annotation)
        if flag and not isinstance(value, bool) and not (value is None and default is None):
            raise BadInput(f"{where}.{key}={typed(value)} is not valid: true or false")


@dataclass(frozen=True, kw_only=True)
class Optim(Group):
    """The optimizer class (`_target_`) and its arguments; lr and weight_decay reach it only through the parameter
    groups (imgclf.training.optimizers.param_groups), the rest as keywords."""

    EXTRA_KEYS = True

    _target_: str = rule(TEXT)
    lr: float = rule(number(0, above=True))
    weight_decay: float = rule(number(0), 0.0)
    momentum: float | None = rule(optional(number(0, 1)), None)
    _partial_: bool = rule(BOOLEAN, True)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def factory(self) -> Callable:
        """The optimizer class with its keywords bound: call it with parameter groups."""
        from hydra.utils import instantiate

        return instantiate({"_target_": self._target_, "_partial_": True, **self.keywords()})

    def keywords(self) -> dict[str, Any]:
        return {**({"momentum": self.momentum} if self.momentum is not None else {}), **self.extra}

    def check_target(self, where: str) -> None:
        check_keywords(self._target_, {"lr": self.lr, **self.keywords()}, where, ("params",))


@dataclass(frozen=True, kw_only=True)
class Schedule(Group):
    """The schedule function (`_target_`, in imgclf.training.optimizers) and its arguments."""

    _target_: str = rule(TEXT)
    _partial_: bool = rule(BOOLEAN, True)
    pct_start: float | None = rule(optional(number(0, 1, above=True)), None)
    warmup_epochs: float | None = rule(optional(number(0)), None)
    min_lr_ratio: float | None = rule(optional(number(0, 1, below=False)), None)
    step_epochs: int | None = rule(optional(integer(1)), None)
    gamma: float | None = rule(optional(number(0, 1, above=True, below=False)), None)

    def factory(self) -> Callable:
        """The schedule with its arguments bound: call it with (optimizer, epochs=, steps_per_epoch=)."""
        from hydra.utils import instantiate

        return instantiate({"_target_": self._target_, "_partial_": True, **self.keywords()})

    def keywords(self) -> dict[str, Any]:
        names = ("pct_start", "warmup_epochs", "min_lr_ratio", "step_epochs", "gamma")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

    def check_target(self, where: str) -> None:
        check_keywords(self._target_, self.keywords(), where, ("optimizer", "epochs", "steps_per_epoch"))


@dataclass(frozen=True, kw_only=True)
class Finetune(Group):
    strategy: str = rule(one_of(*STRATEGIES))
    freeze_epochs: int | None = rule(optional(integer(0)), None)  # null: the strategy decides (head: throughout)
    backbone_lr_divisor: float = rule(
        number(1), 1
    )  # the backbone learns at optim.lr / this: never faster than the head
    cache_features: bool = rule(BOOLEAN, False)


@dataclass(frozen=True, kw_only=True)
class EarlyStopping(Group):
    patience: int | None = rule(optional(integer(1)), None)
    min_delta: float = rule(number(0), 0.0)


@dataclass(frozen=True, kw_only=True)
class Trainer(Group):
    epochs: int | str = rule(((lambda v: v == "auto" or integer(1)[0](v)), "auto or an integer >= 1"))
    min_epochs: int = rule(integer(1), 12)  # epochs=auto: at least this many epochs ...
    min_steps: int = rule(integer(0), 240)  # ... and at least this many optimiser steps (a small data set)
    batch_size: int = rule(integer(1))
    device: str = rule(one_of(*DEVICES), "auto")
    deterministic: bool = rule(BOOLEAN, True)
    log_every: int = rule(integer(1), 5)
    amp: bool = rule(BOOLEAN, True)
    channels_last: bool = rule(BOOLEAN, True)
    compile: bool = rule(BOOLEAN, False)
    label_smoothing: float = rule(number(0, 1), 0.0)
    grad_clip: float | None = rule(optional(number(0, above=True)), None)
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    keep: str = rule(one_of("last", "best"), "last")
    resume: str = rule(((lambda v: isinstance(v, str) and v != ""), "auto, never or the path of a last.pt"), "auto")

    def epochs_for(self, steps_per_epoch: int) -> int:
        """trainer.epochs, or for auto: min_epochs, or more when an epoch is short, until min_steps steps."""
        if self.epochs != "auto":
            return self.epochs
        return max(self.min_epochs, math.ceil(self.min_steps / max(steps_per_epoch, 1)))


TTA: Rule = subset_of("hflip", "crops")
AUTO_PRESETS = ("digits", "photos")  # what augment=auto chooses between


@dataclass(frozen=True, kw_only=True)
class Augment(Group):
    ops: Mapping[str, Any] = rule(((lambda v: isinstance(v, Mapping)), "a mapping of name: kornia op"), {})
    tta: tuple[str, ...] = rule(TTA, ())
    preset: str | None = rule(optional(one_of("auto")), None)  # auto: ops and tta from presets, by the data
    presets: Mapping[str, Any] = rule(((lambda v: isinstance(v, Mapping)), "a mapping of preset: ops and tta"), {})

    def check(self, where: str) -> None:
        if self.preset != "auto":
            return
        for name in AUTO_PRESETS:
            chosen = self.presets.get(name)
            if not isinstance(chosen, Mapping) or not isinstance(chosen.get("ops"), Mapping):
                raise BadInput(f"{where}=auto needs {where}.presets.{name}.ops (conf/augment/auto.yaml composes it)")
            if not TTA[0](chosen.get("tta", [])):
                raise BadInput(f"{where}.presets.{name}.tta={chosen.get('tta')!r} is not valid: {TTA[1]}")

    def op_sets(self) -> list[Mapping[str, Any]]:
        """The ops training may make: the chosen preset's, or for auto each preset's (split's images choose)."""
        return [self.ops] if self.preset != "auto" else [self.presets[n]["ops"] for n in AUTO_PRESETS]


@dataclass(frozen=True, kw_only=True)
class Evaluate(Group):
    tta: tuple[str, ...] = rule(TTA, ())


@dataclass(frozen=True, kw_only=True)
class LabelIssues(Group):
    folds: int = rule(integer(2), 5)
    splits: tuple[str, ...] = rule(
        (
            (lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and set(v) <= {"train", "val", "test"}),
            "a list of: train, val, test",
        ),
        ("train", "val", "test"),
    )
    top: int = rule(integer(1), 25)


@dataclass(frozen=True, kw_only=True)
class Export(Group):
    # torch's ONNX exporter writes opset 18 and up: asked for less, it keeps 18 when its down-conversion fails
    # (AlexNet's, VGG's), so a lower opset would be a file that is not what params.yaml says
    opset: int = rule(integer(18), 18)
    verify_images: int = rule(integer(1), 64)
    atol: float = rule(number(0, above=True), 1e-4)
    registered_name: str | None = rule(OPTIONAL_TEXT, None)

    def check(self, where: str) -> None:
        name = self.registered_name
        if name is not None and (not name.strip() or "/" in name or ":" in name or not name.isprintable()):
            raise BadInput(
                f"{where}.registered_name={name!r} is not valid: null, or a name for MLflow's model registry "
                "(not blank, no '/' or ':')"
            )
        if self.opset > 18:  # the onnx package knows the newest it reads; torch's exporter keeps 18 past it, silently
            from onnx.defs import onnx_opset_version

            if self.opset > (newest := onnx_opset_version()):
                raise BadInput(f"{where}.opset={self.opset} is not valid: an integer from 18 to {newest}")


@dataclass(frozen=True, kw_only=True)
class Optimise(Group):
    method: str = rule(one_of(*METHODS))
    calibration_images: int = rule(integer(0), 256)
    seed: int = rule(SEED, 0)
    per_channel: bool = rule(BOOLEAN, True)
    max_acc_drop: float = rule(number(0, 1, below=False), 0.005)  # 1: keep whatever the optimised model scores
    significance: float = rule(number(0, 1, below=False), 0.05)  # 1: any drop past max_acc_drop fails the gate

    def check(self, where: str) -> None:
        if "int8" in self.method and self.calibration_images < 1:
            raise BadInput(
                f"{where}.calibration_images=0 is not valid for {where}={self.method}: INT8 needs calibration "
                "images (an integer >= 1)"
            )


@dataclass(frozen=True, kw_only=True)
class Tracking(Group):
    uri: str = rule(TEXT)
    experiment: str = rule(
        (lambda v: TEXT[0](v) and len(v) <= 500, "a non-blank string of at most 500 characters"), "imgclf"
    )  # MLflow's limit
    run_name: str | None = rule(OPTIONAL_TEXT, None)
    outbox: str | None = rule(OPTIONAL_TEXT, None)
    outage_wait_s: float = rule(number(0), 1800)

    def check(self, where: str) -> None:
        if why := unknown_store(self.uri):
            raise BadInput(f"{where}.uri={why}")
        if self.outbox is not None and (why := unmakeable_folder(self.outbox)):  # found only once the run was open
            raise BadInput(f"{where}.outbox={self.outbox!r} {why}")
        # a password in tracking.uri that came from a file (params.yaml, conf/) would reach dvc.lock. On the
        # command line it never gets this far: credentials.strip_overrides moves it into MLflow's variables first
        if HTTP_USERINFO.match(self.uri):
            raise BadInput(
                f"{where}.uri in params.yaml or conf/ holds credentials (DVC would write them to dvc.lock, and "
                "`dvc exp run -S` has already written them to params.yaml): delete them there and set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead"
            )


@dataclass(frozen=True, kw_only=True)
class LrFind(Group):
    start_lr: float = rule(number(0, above=True), 1e-7)
    end_lr: float = rule(number(0, above=True), 10.0)
    num_batches: int = rule(integer(3), 100)  # the fewest a rate is suggested from (imgclf.training.lr_find)

    def check(self, where: str) -> None:
        if self.end_lr <= self.start_lr:
            raise BadInput(f"{where}.end_lr={self.end_lr} is not valid: a number > {where}.start_lr={self.start_lr}")


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
        own = Path(os.path.expanduser(self.paths.data), self.data.name).resolve()  # links and .. followed
        for key in FOLDERS:
            given = getattr(self.data, key)
            folder = Path(os.path.expanduser(given)).resolve() if given is not None else None
            if folder is not None and (folder == own or own in folder.parents or folder in own.parents):
                how = "holds" if folder in own.parents else "is inside"
                raise BadInput(
                    f"data.{key}={given} {how} fetch's own output ({self.paths.data}/{self.data.name}): give the "
                    "folder your images are in, outside it"
                )

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
                ok, valid = f.metadata.get("rule", ANY)
                if not ok(node[f.name]):
                    raise BadInput(f"{f.name}={node[f.name]!r} is not valid: {valid}")
                values[f.name] = node[f.name]
        built = cls(**values)
        built.check(where)
        return built


OPTIONAL_GROUPS = ("augment", "evaluate", "export", "lr_find")  # older configs (a run being reproduced) lack them
