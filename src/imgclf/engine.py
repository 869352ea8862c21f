"""train_one_epoch() and evaluate(): plain functions over a model, a loader and a device."""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from tqdm import tqdm

log = logging.getLogger(__name__)


class Preprocess(nn.Module):
    """uint8 NCHW batch -> normalized float, on the target device (the GPU does the arithmetic)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


@dataclass
class DeviceSetup:
    """How batches run on a device: AMP dtype (None = full precision) and memory format."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def for_device(cls, device: torch.device) -> "DeviceSetup":
        # GPU fast path: bf16 autocast where supported (no loss scaling needed), fp16 otherwise;
        # channels_last feeds tensor cores. On CPU both stay off: fp32 is what CPUs do fastest here.
        if device.type != "cuda":
            return cls(device)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cls(device, amp_dtype=dtype, channels_last=True)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    def to_input(self, images: torch.Tensor, preprocess: Preprocess, augment=None) -> torch.Tensor:
        # non_blocking pairs with pinned loader memory so the copy overlaps compute
        x = images.to(self.device, non_blocking=True)
        x = preprocess(augment(x) if augment is not None else x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


class Progress:
    """tqdm bar on a terminal; plain log lines every `log_every` batches otherwise (CI, DVC logs)."""

    def __init__(self, total: int, desc: str, log_every: int = 10, tty: bool | None = None):
        self.tty = sys.stderr.isatty() if tty is None else tty
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


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss."""


def train_one_epoch(
    model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, loader, setup: DeviceSetup,
    preprocess: Preprocess, epoch: int, scaler: torch.amp.GradScaler | None = None, log_every: int = 10,
    augment=None, scheduler=None,
) -> dict[str, float]:
    """One pass over `loader`, stepping `scheduler` per batch; returns train/loss, train/acc and throughput."""
    model.train()
    total_loss, seen = 0.0, 0
    correct = torch.zeros((), dtype=torch.int64, device=setup.device)  # summed on the device: no sync per step
    progress = Progress(len(loader), f"epoch {epoch}", log_every)
    start = time.perf_counter()
    for step, (images, labels) in enumerate(loader, start=1):
        x = setup.to_input(images, preprocess, augment)
        y = labels.to(setup.device, non_blocking=True)
        with setup.autocast():
            logits = model(x)
            loss = criterion(logits, y)
        loss_value = loss.item()  # the one host sync per step: checked before the weights change
        if not math.isfinite(loss_value):
            raise NonFiniteLoss(f"loss is {loss_value} at epoch {epoch} step {step}; lower optim.lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = y.size(0)
        total_loss += loss_value * n
        correct += (logits.detach().argmax(1) == y).sum()
        seen += n
        progress.update(step, loss_value, seen / (time.perf_counter() - start))
    progress.close()
    elapsed = time.perf_counter() - start
    return {"train/loss": total_loss / seen, "train/acc": correct.item() / seen,
            "train/epoch_time_s": elapsed, "train/images_per_sec": seen / elapsed}


@torch.inference_mode()
def predict(model: nn.Module, loader, setup: DeviceSetup, preprocess: Preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels for every batch of `loader`, in loader order."""
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in loader:
        with setup.autocast():
            logits = model(setup.to_input(images, preprocess))
        all_logits.append(logits.float().cpu())
        all_labels.append(labels)
    return torch.cat(all_logits), torch.cat(all_labels)


def evaluate(model: nn.Module, criterion: nn.Module, loader, setup: DeviceSetup, preprocess: Preprocess,
             prefix: str = "val") -> dict[str, float]:
    """Mean loss and accuracy of `model` over `loader`, keyed `<prefix>/loss`, `<prefix>/acc`."""
    logits, labels = predict(model, loader, setup, preprocess)
    loss = criterion(logits, labels).item()
    acc = (logits.argmax(1) == labels).float().mean().item()
    return {f"{prefix}/loss": loss, f"{prefix}/acc": acc}


@dataclass
class FitResult:
    """What fit() hands back: per-epoch history and the best weights by val/acc."""

    history: list[dict]
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_metrics: dict[str, float]


def fit(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, scheduler, train_loader,
        val_loader, setup: DeviceSetup, preprocess: Preprocess, epochs: int, on_epoch=None,
        log_every: int = 10, augment=None) -> FitResult:
    """Train for `epochs`, validating after each; keep the weights with the best val/acc.

    `scheduler` is stepped once per batch (see imgclf.schedules).
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"trainer.epochs must be a positive integer; got {epochs!r}")
    scaler = torch.amp.GradScaler("cuda") if setup.amp_dtype == torch.float16 else None
    history, best_state, best_epoch, best_metrics = [], {}, 0, {}
    for epoch in range(1, epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        metrics = train_one_epoch(model, criterion, optimizer, train_loader, setup, preprocess, epoch, scaler, log_every,
                                  augment, scheduler)
        metrics.update(evaluate(model, criterion, val_loader, setup, preprocess, prefix="val"))
        metrics["lr"] = lr
        if not best_metrics or metrics["val/acc"] > best_metrics["val/acc"]:
            # a CPU copy: the best weights survive later epochs without touching the disk each time
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            best_epoch, best_metrics = epoch, dict(metrics)
        log.info("epoch %d/%d %s", epoch, epochs, " ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        history.append({"epoch": epoch, **metrics})
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    return FitResult(history, best_state, best_epoch, best_metrics)
