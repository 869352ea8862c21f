"""Learning-rate schedules, stepped once per batch, built from the epoch count and batches per epoch."""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR


def _warmup(step: int, warmup_steps: int) -> float:
    # linear ramp from 1/warmup_steps: the first batches of a from-scratch net take small steps
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def cosine(optimizer: Optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0,
           min_lr_ratio: float = 0.0) -> LRScheduler:
    """Linear warmup, then cosine decay to `min_lr_ratio` x the base rate at the last batch."""
    total, warm = epochs * steps_per_epoch, int(round(warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warm:
            return _warmup(step, warm)
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return LambdaLR(optimizer, factor)


def step(optimizer: Optimizer, epochs: int, steps_per_epoch: int, step_epochs: int = 3, gamma: float = 0.1,
         warmup_epochs: float = 0.0) -> LRScheduler:
    """Multiply the rate by `gamma` every `step_epochs` epochs, after an optional warmup."""
    warm = int(round(warmup_epochs * steps_per_epoch))
    return LambdaLR(optimizer, lambda s: _warmup(s, warm) * gamma ** (s // (step_epochs * steps_per_epoch)))


def constant(optimizer: Optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0) -> LRScheduler:
    """The optimizer's rate throughout, after an optional warmup."""
    warm = int(round(warmup_epochs * steps_per_epoch))
    return LambdaLR(optimizer, lambda s: _warmup(s, warm))


def one_cycle(optimizer: Optimizer, epochs: int, steps_per_epoch: int, pct_start: float = 0.25) -> LRScheduler:
    """fast.ai's one-cycle policy peaking at the optimizer's rate."""
    max_lr = [group["lr"] for group in optimizer.param_groups]
    return OneCycleLR(optimizer, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=pct_start)
