"""The learning rate in one place: parameter groups (head and backbone rates, no decay on norms and biases),
the optimizer built from them, and the schedules stepped once per batch (conf/optim, conf/schedule,
finetune.backbone_lr_divisor)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from imgclf.models.build import head

log = logging.getLogger(__name__)


def param_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_divisor: float = 1.0) -> list[dict]:
    """Optimizer groups: backbone at lr / backbone_lr_divisor, head at lr; no weight decay on norms and biases.

    Decaying a bias or a norm's scale only pulls it towards 0, which regularises nothing (timm's
    param_groups_weight_decay); the head group comes last, so head_lr() reads the rate the schedule sets.
    """
    head_params = {id(p) for p in head(model).parameters()}
    groups: dict[tuple[bool, bool], list] = {(h, d): [] for h in (False, True) for d in (True, False)}
    for p in model.parameters():
        groups[(id(p) in head_params, p.ndim > 1)].append(p)
    return [
        {
            "params": params,
            "lr": lr if is_head else lr / backbone_lr_divisor,
            "weight_decay": weight_decay if decay else 0.0,
        }
        for (is_head, decay), params in groups.items()
        if params
    ]


def build_optimizer(
    factory: Callable[[list[dict]], Optimizer],
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    backbone_lr_divisor: float = 1.0,
) -> Optimizer:
    """`factory` (conf/optim's partial, e.g. torch.optim.AdamW) over param_groups()."""
    return factory(param_groups(model, lr, weight_decay, backbone_lr_divisor))


def head_lr(optimizer: Optimizer) -> float:
    """The head's current rate: the one the schedule sets and the curves show."""
    return optimizer.param_groups[-1]["lr"]


def _warmup(step: int, warmup_steps: int) -> float:
    # linear ramp from 1/warmup_steps: the first batches of a from-scratch net take small steps
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def cosine(
    optimizer: Optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0, min_lr_ratio: float = 0.0
) -> LRScheduler:
    """Linear warmup, then cosine decay to `min_lr_ratio` x the base rate at the last batch."""
    total, warm = epochs * steps_per_epoch, int(round(warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warm:
            return _warmup(step, warm)
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def step(
    optimizer: Optimizer,
    epochs: int,
    steps_per_epoch: int,
    step_epochs: int = 3,
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
) -> LRScheduler:
    """Multiply the rate by `gamma` every `step_epochs` epochs, after an optional warmup."""
    warm = int(round(warmup_epochs * steps_per_epoch))
    return LambdaLR(optimizer, lambda s: _warmup(s, warm) * gamma ** (s // (step_epochs * steps_per_epoch)))


def constant(optimizer: Optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0) -> LRScheduler:
    """The optimizer's rate throughout, after an optional warmup."""
    warm = int(round(warmup_epochs * steps_per_epoch))
    return LambdaLR(optimizer, lambda s: _warmup(s, warm))


def one_cycle(optimizer: Optimizer, epochs: int, steps_per_epoch: int, pct_start: float = 0.25) -> LRScheduler:
    """fast.ai's one-cycle policy peaking at the optimizer's rate. A run of a few steps (a smoke run) keeps at least
    two steps in each phase, so torch's schedule never divides by a phase of no steps; under 3 steps, the rate is
    constant."""
    total = epochs * steps_per_epoch
    if total < 3:
        log.warning("schedule=one_cycle over %d steps: too few for a cycle; the rate stays at optim.lr", total)
        return constant(optimizer, epochs, steps_per_epoch)
    pct = min(max(pct_start, 2 / total), 1 - 1 / total)
    if pct != pct_start:
        log.info("schedule=one_cycle over %d steps: pct_start %.3g instead of %.3g, a step or more a phase", total,
                 pct, pct_start)  # fmt: skip
    max_lr = [group["lr"] for group in optimizer.param_groups]
    return OneCycleLR(optimizer, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=pct)
