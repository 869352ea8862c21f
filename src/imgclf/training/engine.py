"""train_one_epoch(), evaluate() and fit(): plain functions over a model, loaders and a device."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from imgclf.errors import UserError
from imgclf.inference import DeviceSetup, predict
from imgclf.training import distributed as dist
from imgclf.training.optimizers import head_lr

log = logging.getLogger(__name__)


class Progress:
    """tqdm bar on a terminal; plain log lines every `log_every` batches otherwise (CI, DVC logs)."""

    def __init__(self, total: int, desc: str, log_every: int = 10, tty: bool | None = None):
        self.tty = (sys.stderr.isatty() and dist.is_main()) if tty is None else tty
        self.total, self.desc, self.log_every = total, desc, max(1, log_every)
        self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True) if self.tty else None

    def update(self, step: int, loss: float, images_per_sec: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_sec:.0f}")
        elif step % self.log_every == 0 or step == self.total:
            log.info("%s batch %d/%d loss %.4f %.0f img/s", self.desc, step, self.total, loss, images_per_sec)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class NonFiniteLoss(UserError, RuntimeError):
    """Training produced a NaN or infinite loss."""


@dataclass(frozen=True)
class Trainer:
    """What one training step needs besides the batch: the network, loss, optimizer, schedule and device.

    Frozen: a fine-tuning strategy that changes what trains (a head on cached features, a backbone unfrozen and
    re-wrapped for DDP) returns a new Trainer with dataclasses.replace (imgclf.training.finetune).
    """

    model: nn.Module  # what trains: the network, its DDP wrapper, or a head on cached features
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    setup: DeviceSetup
    preprocess: nn.Module | None = None  # None when batches are already features
    scheduler: object = None  # stepped once per batch (imgclf.training.optimizers)
    scaler: torch.amp.GradScaler | None = None
    augment: Callable | None = None
    grad_clip: float | None = None  # max global gradient norm
    frozen_backbone: bool = False  # backbone in eval mode (BN statistics and dropout off), head trains
    log_every: int = 10


def set_train_mode(model: nn.Module, frozen_backbone: bool) -> None:
    """Train mode for what trains; a frozen backbone stays in eval mode so its features do not drift."""
    from imgclf.models.build import head

    model.train()
    if frozen_backbone:
        net = dist.unwrap(model)
        net.eval()
        head(net).train()


def train_one_epoch(t: Trainer, loader, epoch: int) -> dict[str, float]:
    """One pass over `loader`, stepping the schedule per batch; train/loss, train/acc and throughput."""
    set_train_mode(t.model, t.frozen_backbone)
    device = t.setup.device
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)  # summed on the device: no sync per step
    seen = 0
    params = [p for p in t.model.parameters() if p.requires_grad]
    progress = Progress(len(loader), f"epoch {epoch}", t.log_every)
    start = time.perf_counter()
    for step, (images, labels) in enumerate(loader, start=1):
        x = t.setup.to_input(images, t.preprocess, t.augment)
        y = labels.to(device, non_blocking=True)
        with t.setup.autocast():
            logits = t.model(x)
            loss = t.criterion(logits, y)
        loss_value = loss.item()  # the one host sync per step: checked before the weights change
        n = y.size(0)
        # ranks weigh their shard by its share of the global batch: the same gradient as one process
        weight, bad = dist.shard_weight(n, not math.isfinite(loss_value), device)
        if bad:
            raise NonFiniteLoss(
                f"loss is {loss_value if not math.isfinite(loss_value) else 'not finite on another rank'}"
                f" at epoch {epoch} step {step}; lower optim.lr or check the data"
            )
        optimizer_step(t, loss * weight if weight != 1.0 else loss, params)
        if t.scheduler is not None:
            t.scheduler.step()
        total_loss += loss.detach().double() * n
        correct += (logits.detach().argmax(1) == y).sum()
        seen += n
        progress.update(step, loss_value, seen * dist.world_size() / (time.perf_counter() - start))
    progress.close()
    elapsed = time.perf_counter() - start
    loss_sum, correct_sum, seen_sum = dist.all_reduce_sum([total_loss.item(), correct.item(), seen], device)
    return {
        "train/loss": loss_sum / seen_sum,
        "train/acc": correct_sum / seen_sum,
        "train/epoch_time_s": elapsed,
        "train/images_per_sec": seen_sum / elapsed,
    }


def optimizer_step(t: Trainer, loss: torch.Tensor, params: list[torch.Tensor]) -> None:
    """Backward and update: loss scaling for fp16, gradient clipping on the true (unscaled) gradients."""
    t.optimizer.zero_grad(set_to_none=True)
    if t.scaler is not None:
        t.scaler.scale(loss).backward()
        if t.grad_clip:
            t.scaler.unscale_(t.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(params, t.grad_clip)
        t.scaler.step(t.optimizer)
        t.scaler.update()
    else:
        loss.backward()
        if t.grad_clip:
            nn.utils.clip_grad_norm_(params, t.grad_clip)
        t.optimizer.step()


def evaluate(
    model: nn.Module, loader, setup: DeviceSetup, preprocess: nn.Module | None, prefix: str = "val"
) -> dict[str, float]:
    """Mean cross-entropy and accuracy over `loader` (summed over ranks), keyed `<prefix>/loss`, `<prefix>/acc`."""
    logits, labels = predict(model, loader, setup, preprocess)
    loss_sum = F.cross_entropy(logits, labels, reduction="sum").item()
    correct = (logits.argmax(1) == labels).sum().item()
    loss_sum, correct, n = dist.all_reduce_sum([loss_sum, correct, len(labels)], setup.device)
    return {f"{prefix}/loss": loss_sum / n, f"{prefix}/acc": correct / n}


@dataclass
class FitState:
    """Where training is: what a checkpoint restores and what fit() returns."""

    epoch: int = 0  # last completed epoch
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_metrics: dict = field(default_factory=dict)
    best_state: dict = field(default_factory=dict)
    bad_epochs: int = 0  # epochs since val/acc last improved by more than min_delta
    stopped_early: bool = False
    pruned: bool = False  # stopped early by a sweep's pruner (said by after_epoch), not by patience


def fit(
    t: Trainer,
    train_loader,
    val_loader,
    epochs: int,
    state: FitState | None = None,
    *,
    network: nn.Module | None = None,
    patience: int | None = None,
    min_delta: float = 0.0,
    before_epoch: Callable[[int, Trainer], Trainer] | None = None,
    after_epoch: Callable[[int, dict, FitState], None] | None = None,
) -> FitState:
    """Train from `state.epoch + 1` to `epochs`, validating each epoch; keep the best weights by val/acc.

    `network` is the module whose weights are the result (the whole network when only its head trains);
    `before_epoch` returns the Trainer for that epoch (imgclf.training.finetune unfreezes the backbone this way);
    `patience` stops after that many epochs without a val/acc gain above `min_delta`.
    """
    state = state or FitState()
    network = network or dist.unwrap(t.model)
    last_epoch = state.epoch if state.stopped_early else epochs  # a resumed run that had stopped stays stopped
    for epoch in range(state.epoch + 1, last_epoch + 1):
        if before_epoch is not None:
            t = before_epoch(epoch, t)
        lr = head_lr(t.optimizer)
        metrics = train_one_epoch(t, train_loader, epoch)
        metrics.update(evaluate(t.model, val_loader, t.setup, t.preprocess, prefix="val"))
        metrics["lr"] = lr
        if not state.best_metrics or metrics["val/acc"] > state.best_metrics["val/acc"]:
            # a CPU copy: the best weights survive later epochs
            state.best_state = {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}
            state.best_epoch, state.best_metrics = epoch, dict(metrics)
        gain = metrics["val/acc"] - max((h["val/acc"] for h in state.history), default=-math.inf)
        state.bad_epochs = 0 if gain > min_delta else state.bad_epochs + 1
        state.epoch = epoch
        state.history.append({"epoch": epoch, **metrics})
        log.info("epoch %d/%d %s", epoch, epochs, " ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        state.stopped_early = bool(patience and state.bad_epochs >= patience and epoch < epochs)
        if after_epoch is not None:  # the checkpoint records the decision: a resumed run stops too
            after_epoch(epoch, metrics, state)
        if state.stopped_early and state.pruned:
            break
        if state.stopped_early:
            log.info(
                "early stopping: val/acc has not improved by more than %g for %d epochs (best %.4f at epoch %d)",
                min_delta,
                patience,
                state.best_metrics["val/acc"],
                state.best_epoch,
            )
            break
    return state
