"""fast.ai's learning-rate finder: train on ~100 batches while the rate grows exponentially, record the smoothed
loss, suggest the rate where it falls fastest; the model and optimizer are given back as they were."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from imgclf.errors import BadInput
from imgclf.training.engine import Trainer, optimizer_step, set_train_mode


@dataclass
class LRFind:
    """The sweep: head learning rates tried, the smoothed loss at each, and the suggested rate."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    suggestion: float = float("nan")

    @property
    def minimum_over_10(self) -> float:
        """fast.ai's older rule of thumb: a tenth of the rate with the lowest loss."""
        return float(self.lrs[int(np.argmin(self.losses))]) / 10 if self.lrs else float("nan")


def lr_find(
    t: Trainer, loader, *, start_lr: float = 1e-7, end_lr: float = 10.0, num_batches: int = 100, diverge: float = 4.0
) -> LRFind:
    """Sweep the head's rate from `start_lr` to `end_lr` over `num_batches` (cycling the loader); every param
    group keeps its ratio to the head (a slower backbone stays slower). Stops when the smoothed loss exceeds
    `diverge` times its best. Restores the model's and the optimizer's state afterwards."""
    if not 0 < start_lr < end_lr or num_batches < MIN_BATCHES:
        raise BadInput(
            f"lr_find needs 0 < start_lr < end_lr and num_batches >= {MIN_BATCHES}; got {start_lr}, {end_lr}, "
            f"{num_batches}"
        )
    saved = copy.deepcopy(t.model.state_dict()), copy.deepcopy(t.optimizer.state_dict())
    ratios = [g["lr"] / t.optimizer.param_groups[-1]["lr"] for g in t.optimizer.param_groups]
    result, smoothed, best = LRFind(), 0.0, math.inf
    try:
        set_train_mode(t.model, t.frozen_backbone)
        for step, (images, labels) in enumerate(_cycle(loader, num_batches)):
            lr = _rate(start_lr, end_lr, step / (num_batches - 1))
            for group, ratio in zip(t.optimizer.param_groups, ratios):
                group["lr"] = lr * ratio
            loss = _step(t, images, labels)
            smoothed = 0.98 * smoothed + 0.02 * loss  # fast.ai's exponential moving average, bias-corrected
            value = smoothed / (1 - 0.98 ** (step + 1))
            result.lrs.append(lr)
            result.losses.append(value)
            best = min(best, value)
            if not math.isfinite(value) or value > diverge * best:
                break
    finally:
        t.model.load_state_dict(saved[0])
        t.optimizer.load_state_dict(saved[1])  # rates and moments as they were
    result.suggestion = suggest(result.lrs, result.losses)
    return result


MIN_BATCHES = 3  # the fewest a suggestion is made from (a slope between three points)


def _rate(start_lr: float, end_lr: float, fraction: float) -> float:
    """The rate `fraction` of the way from start_lr to end_lr on a log scale (no overflow of end_lr / start_lr)."""
    return math.exp(math.log(start_lr) + (math.log(end_lr) - math.log(start_lr)) * fraction)


def suggest(lrs: list[float], losses: list[float]) -> float:
    """The rate where the smoothed loss falls fastest against log(lr), ignoring the diverging tail; NaN when the
    sweep recorded fewer than MIN_BATCHES losses (it diverged at once) or none is finite."""
    if len(lrs) < MIN_BATCHES or not any(map(math.isfinite, losses)):
        return float("nan")
    keep = int(np.argmin(losses)) + 1  # up to the lowest loss: past it the loss only rises
    slopes = np.gradient(np.asarray(losses[:keep]), np.log(np.asarray(lrs[:keep]))) if keep >= 3 else None
    found = float(lrs[int(np.argmin(slopes))]) if slopes is not None else float(lrs[keep - 1]) / 10
    return found if math.isfinite(found) else float("nan")


def _cycle(loader, n: int):
    seen = 0
    while seen < n:
        for batch in loader:
            yield batch
            seen += 1
            if seen == n:
                return


def _step(t: Trainer, images: torch.Tensor, labels: torch.Tensor) -> float:
    x = t.setup.to_input(images, t.preprocess, t.augment)
    y = labels.to(t.setup.device, non_blocking=True)
    with t.setup.autocast():
        loss = t.criterion(t.model(x), y)
    value = loss.item()
    if not math.isfinite(value):
        return math.inf  # the sweep has diverged: recorded as the end
    optimizer_step(t, loss, [p for p in t.model.parameters() if p.requires_grad])  # as training steps
    return value
