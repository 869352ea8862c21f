"""The composed config checked up front: one line naming the key, its value and what is valid, before any stage
reads data, builds a network or writes anything (stages/_app.py calls `check` first).

Keys a config does not have (another data source, another model) are not checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from imgclf.credentials import HTTP_USERINFO
from imgclf.errors import BadInput

ABSENT = object()


def select(config: Mapping[str, Any], key: str) -> Any:
    """config["a"]["b"] for "a.b"; ABSENT when a part is missing."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return ABSENT
        node = node[part]
    return node


MIN_IMAGE_SIZE = {"alexnet": 63}  # AlexNet's five poolings leave nothing below 63 px; the others work from 32
DEFAULT_MIN_IMAGE_SIZE = 32


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(lo: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _integer(v) and v >= lo), f"an integer >= {lo}"


def number(lo: float, hi: float | None = None, *, above: bool = False, below: bool = True) -> tuple:
    def ok(v: Any) -> bool:
        if not _number(v) or v < lo or (above and v == lo):
            return False
        return hi is None or v < hi or (not below and v == hi)

    low = f"> {lo}" if above else f">= {lo}"
    return ok, f"a number {low}" + (f" and {'<' if below else '<='} {hi}" if hi is not None else "")


def optional(rule: tuple) -> tuple:
    ok, text = rule
    return (lambda v: v is None or ok(v)), f"null or {text}"


def one_of(*values: str) -> tuple:
    return (lambda v: v in values), "one of: " + ", ".join(values)


BOOLEAN = ((lambda v: isinstance(v, bool)), "true or false")

RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": integer(0),
    "optim.lr": number(0, above=True),
    "optim.weight_decay": number(0),
    "trainer.epochs": integer(1),
    "trainer.batch_size": integer(1),
    "trainer.log_every": integer(1),
    "trainer.label_smoothing": number(0, 1),
    "trainer.grad_clip": optional(number(0, above=True)),
    "trainer.amp": BOOLEAN,
    "trainer.channels_last": BOOLEAN,
    "trainer.deterministic": BOOLEAN,
    "trainer.keep": one_of("last", "best"),
    "trainer.early_stopping.patience": optional(integer(1)),
    "trainer.early_stopping.min_delta": number(0),
    "data.split.val_fraction": number(0, 1),
    "data.split.test_fraction": number(0, 1),
    "data.split.seed": integer(0),
    "data.split.sample_per_class": integer(1),
    "model.image_size": optional(integer(DEFAULT_MIN_IMAGE_SIZE)),
    "model.crop_pct": optional(number(0, 1, above=True, below=False)),
    "model.dropout": optional(number(0, 1)),
    "optim.momentum": number(0, 1),
    "schedule.pct_start": number(0, 1, above=True),
    "schedule.warmup_epochs": number(0),
    "schedule.min_lr_ratio": number(0, 1, below=False),
    "schedule.step_epochs": integer(1),
    "schedule.gamma": number(0, 1, above=True, below=False),
    "finetune.freeze_epochs": optional(integer(0)),  # null: the strategy decides (head: frozen throughout)
    "finetune.backbone_lr_divisor": number(0, above=True),
    "evaluate.top_k": integer(1),
    "export.opset": integer(7),
    "export.verify_images": integer(1),
    "export.atol": number(0, above=True),
    "tracking.outage_wait_s": number(0),
    "optimise.calibration_images": integer(0),
    "optimise.max_acc_drop": number(0, 1),
}
PATHS = ("data.path", "data.val_path", "data.test_path")  # folders of class sub-folders, when given


def check(config: Mapping[str, Any]) -> None:
    """Raise BadInput for the first key whose value is of the wrong type or out of range."""
    for key, (ok, valid) in RULES.items():
        value = select(config, key)
        if value is not ABSENT and not ok(value):
            raise BadInput(f"{key}={value!r} is not valid: {valid}")
    fractions = select(config, "data.split.val_fraction"), select(config, "data.split.test_fraction")
    if ABSENT not in fractions and sum(fractions) >= 1:
        raise BadInput(
            f"data.split.val_fraction + data.split.test_fraction = {sum(fractions):g}: "
            "must be < 1 (something is left to train on)"
        )
    _check_image_size(config)
    _refuse_stored_credentials(config)
    for key in PATHS:
        path = select(config, key)
        if path not in (None, ABSENT) and not Path(str(path)).expanduser().is_dir():
            what = "is a file" if Path(str(path)).expanduser().exists() else "does not exist"
            raise BadInput(f"{key}={path} {what}: give a folder with one sub-folder per class")


def _check_image_size(config: Mapping[str, Any]) -> None:
    size, name = select(config, "model.image_size"), select(config, "model.name")
    least = MIN_IMAGE_SIZE.get(str(name), DEFAULT_MIN_IMAGE_SIZE)
    if _integer(size) and size < least:
        raise BadInput(f"model.image_size={size} is too small for {name}: it needs at least {least} px")


def _refuse_stored_credentials(config: Mapping[str, Any]) -> None:
    """A password in tracking.uri that came from a file (params.yaml, conf/) would reach dvc.lock. On the command
    line it never gets this far: credentials.strip_overrides moves it into MLflow's variables first."""
    uri = select(config, "tracking.uri")
    if isinstance(uri, str) and HTTP_USERINFO.match(uri):
        raise BadInput(
            "tracking.uri in params.yaml or conf/ holds credentials (DVC would write them to dvc.lock); "
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead"
        )
