"""What a valid value is: the rules each option's field carries, the vocabularies the library dispatches on, and
`Group`, which builds one config group from its mapping and refuses keys it lacks."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import field
from functools import cache
from typing import Any

from imgclf.errors import BadInput, did_you_mean
from imgclf.paths import DATA_NAME

# Vocabularies the library dispatches on without checking again. The options package imports no other part of
# imgclf (errors, paths, files, credentials and config's one constant aside), so a stage's code deps in dvc.yaml do
# not grow by library modules it never runs: fetch reruns for an edit of fetch's code, not of the serving contract's.
# tests/test_options.py keeps these equal to what the library implements.
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


def refusal(key: str, value: Any, check: Rule) -> str:
    """`key=value is not valid: what is valid`, and how to write the value so that it is, where a change of type
    would do: YAML and Hydra read 2024 as a number, and a quoted number or a resolver's result (${now:%s}) is text."""
    ok, valid = check
    said = f"{key}={typed(value)} is not valid: {valid}"
    text = typed(value)
    if isinstance(value, (int, float, bool)) and ok(text):
        return f"{said}; quoted, it is text: {key}='{text}'"
    number = _as_number(value)
    if number is None or not ok(number):
        return said
    said += f"; {text} is text (as a quoted number or a resolver such as ${{now:%s}} gives it): write the number"
    if check is SEED:  # a seed from the clock, recorded as the number it was: the shell's, not a resolver's
        return f"{said}, {key}={number}, or let the shell pick one: {key}=$(date +%s)"
    return f"{said}, {key}={number}"


def _as_number(value: Any) -> int | float | None:
    """The number a text spells (' 12' and '1e3' too), or None."""
    if not isinstance(value, str):
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return None


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
            check = f.metadata.get("rule", ANY)
            if not check[0](value):
                raise BadInput(refusal(key, value, check))
            values[f.name] = tuple(value) if isinstance(value, list) else value
        built = cls(**values)
        built.check(where)
        return built

    def check(self, where: str) -> None:
        """Rules across fields; a group with none keeps this."""


TTA: Rule = subset_of("hflip", "crops")  # augment.tta and evaluate.tta
