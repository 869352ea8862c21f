"""Running a network over a loader: the device setup (AMP, channels_last), predictions, test-time views, backbone
features. Training, evaluation and the export checks all run batches this way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DeviceSetup:
    """How batches run on a device: AMP dtype (None = full precision) and memory format."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def for_device(cls, device: torch.device, amp: bool = True, channels_last: bool = True) -> DeviceSetup:
        # GPU fast path: bf16 autocast where supported (no loss scaling needed), fp16 otherwise;
        # channels_last feeds tensor cores. On CPU both stay off: fp32 is what CPUs do fastest here.
        if device.type != "cuda":
            return cls(device)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cls(device, amp_dtype=dtype if amp else None, channels_last=channels_last)

    def autocast(self):
        return torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        )

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 needs loss scaling; bf16 and fp32 do not."""
        return torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    def to_input(self, images: torch.Tensor, preprocess: nn.Module | None, augment=None) -> torch.Tensor:
        # non_blocking pairs with pinned loader memory so the copy overlaps compute
        x = images.to(self.device, non_blocking=True)
        if augment is not None:
            x = augment(x)
        if preprocess is not None:
            x = preprocess(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


@torch.inference_mode()
def predict(
    model: nn.Module, loader, setup: DeviceSetup, preprocess: nn.Module | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels for every batch of `loader`, in loader order."""
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in loader:
        with setup.autocast():
            logits = model(setup.to_input(images, preprocess))
        all_logits.append(logits.float().cpu())
        all_labels.append(labels)
    return torch.cat(all_logits), torch.cat(all_labels)


@torch.inference_mode()
def predict_views(
    model: nn.Module, loader, setup: DeviceSetup, preprocess: nn.Module | None, views: Callable
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (V, N, C) for each of the V views `views(batch)` makes of every batch (test-time augmentation),
    and the labels."""
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in loader:
        with setup.autocast():
            logits = [model(setup.to_input(view, preprocess)).float().cpu() for view in views(images)]
        all_logits.append(torch.stack(logits))
        all_labels.append(labels)
    return torch.cat(all_logits, 1), torch.cat(all_labels)


@torch.inference_mode()
def compute_features(
    model: nn.Module, loader, setup: DeviceSetup, preprocess: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen backbone's output for every batch, once: head-only epochs then cost only the head."""
    from imgclf.models.build import features

    model.eval()
    feats, labels = [], []
    for images, y in loader:
        with setup.autocast():
            feats.append(features(model, setup.to_input(images, preprocess)).float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)
