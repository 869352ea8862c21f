"""The options of training: the network (model), the optimizer and its schedule, fine-tuning, the trainer, the
augmentation, and the learning-rate finder."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from imgclf.errors import BadInput, did_you_mean
from imgclf.options.rules import (
    ANY,
    BOOLEAN,
    DEVICES,
    INTERPOLATIONS,
    MAX_INPUT_SIZE,
    OPTIONAL_TEXT,
    RESIZE_MODES,
    SOURCES,
    STRATEGIES,
    TEXT,
    TTA,
    Group,
    Rule,
    integer,
    number,
    one_of,
    optional,
    rule,
    triple,
    typed,
)
from imgclf.targets import unreadable_file

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
        if self.weights is not None and (why := unreadable_file(self.weights)):
            shown = self.weights if self.weights.isprintable() else repr(self.weights)
            raise BadInput(f"{where}.weights={shown} {why}: give a .pth, .safetensors or model.pt file")


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
        """The keywords by name (check_keywords), then by value: the optimizer made once for one parameter, as
        training makes it (`+optim.eps=-1` was a traceback at the start of training)."""
        check_keywords(self._target_, {"lr": self.lr, **self.keywords()}, where, ("params",))
        import torch

        group = {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": self.lr, "weight_decay": self.weight_decay}
        try:
            self.factory()([group])
        except (ValueError, TypeError, RuntimeError) as exc:
            said = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise BadInput(f"{where}: {self._target_} refuses these values: {said}") from None


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

    def check(self, where: str) -> None:
        """A checkpoint that is there but no file (a folder, a pipe, /dev/zero, /proc/self/mem): one line before the
        network is built, where torch.load's traceback or endless read came after. One not there is train's to
        refuse: evaluate's options outlive the file a finished resume started from."""
        if self.resume in ("auto", "never"):
            return
        why = unreadable_file(self.resume)
        if why and why != "does not exist":
            shown = self.resume if self.resume.isprintable() else repr(self.resume)
            raise BadInput(f"{where}.resume={shown} {why}: give auto, never or the path of a checkpoint file (a "
                           "last.pt training wrote)")  # fmt: skip

    def epochs_for(self, steps_per_epoch: int) -> int:
        """trainer.epochs, or for auto: min_epochs, or more when an epoch is short, until min_steps steps."""
        if self.epochs != "auto":
            return self.epochs
        return max(self.min_epochs, math.ceil(self.min_steps / max(steps_per_epoch, 1)))


AUTO_PRESETS = ("digits", "photos")  # what augment=auto chooses between
OPS: Rule = (
    lambda v: isinstance(v, Mapping),
    "a mapping of name: kornia.augmentation op, as conf/augment/ writes them (add one with "
    "+augment.ops.flip={_target_:kornia.augmentation.RandomHorizontalFlip}); no augmentation is augment=none",
)


@dataclass(frozen=True, kw_only=True)
class Augment(Group):
    ops: Mapping[str, Any] = rule(OPS, {})
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


# The rates a finder sweeps: below 1e-10 a step moves no float32 weight (a float32 resolves 1e-7 of the weight), and
# past 100 the loss has diverged long before, where the sweep stops; the batches spread evenly over the log of the
# range, so a wider one (1e308) only leaves fewer of them where a network learns. fast.ai sweeps 1e-7 to 10.
LR_FIND_RATE: Rule = (
    number(1e-10, 100, below=False)[0],
    "a number from 1e-10 to 100 (below, a step moves no float32 weight; past 100 the loss has long diverged)",
)


@dataclass(frozen=True, kw_only=True)
class LrFind(Group):
    start_lr: float = rule(LR_FIND_RATE, 1e-7)
    end_lr: float = rule(LR_FIND_RATE, 10.0)
    num_batches: int = rule(integer(3, 100_000), 100)  # from the fewest a rate is suggested from (training.lr_find)

    def check(self, where: str) -> None:
        if self.end_lr <= self.start_lr:  # the sweep rises from start_lr to end_lr
            raise BadInput(f"{where}.start_lr={self.start_lr:g} is not below {where}.end_lr={self.end_lr:g}: give "
                           f"{where}.start_lr < {where}.end_lr, both from 1e-10 to 100")  # fmt: skip
