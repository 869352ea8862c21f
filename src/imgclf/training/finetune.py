"""Fine-tuning strategies (conf/finetune): which layers train in which epoch, and head-only training on cached
backbone features. `prepare()` turns a strategy into the Trainer, loaders and per-epoch hook that fit() runs."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from imgclf.data.datasets import TensorImageDataset, build_loader
from imgclf.inference import compute_features
from imgclf.models.build import head, set_backbone_trainable
from imgclf.training import distributed as dist
from imgclf.training.engine import Trainer

log = logging.getLogger(__name__)

FROZEN_EPOCHS = {"head": math.inf, "full": 0}  # gradual: finetune.freeze_epochs
STRATEGIES = (*FROZEN_EPOCHS, "gradual")  # gradual: frozen for freeze_epochs


@dataclass(frozen=True)
class Strategy:
    """conf/finetune as plain values."""

    name: str
    freeze_epochs: int | None = None  # gradual only: epochs with the backbone frozen
    cache_features: bool = False  # head only: compute the frozen backbone's features once
    compile: bool = False  # torch.compile what trains (CUDA only)

    def frozen_for(self) -> float:
        """Epochs with the backbone frozen: all (head), none (full) or freeze_epochs (gradual)."""
        return FROZEN_EPOCHS.get(self.name, self.freeze_epochs or 0)


@dataclass
class Prepared:
    """What fit() runs for a strategy: the trainer and loaders of the first epoch, and the per-epoch hook."""

    trainer: Trainer
    train_loader: object
    val_loader: object
    before_epoch: Callable[[int, Trainer], Trainer] | None


def prepare(
    strategy: Strategy,
    trainer: Trainer,
    network: nn.Module,
    train_loader,
    val_loader,
    *,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> Prepared:
    """Cached-feature head training when the backbone never trains and the input never changes; else per-epoch
    freezing (which unfreezes on schedule and re-wraps for DDP and torch.compile)."""
    frozen_for = strategy.frozen_for()
    cache = frozen_for == math.inf and strategy.cache_features
    if cache and (trainer.augment is not None or dist.is_distributed()):
        log.info(
            "finetune.cache_features: not caching, %s",
            "the augmentation (conf/augment) changes the input every epoch"
            if trainer.augment is not None
            else "each process would cache only its own shard",
        )
    elif cache:
        return head_on_cached_features(trainer, network, (train_loader, val_loader), batch_size, generator)
    compiled = strategy.compile and trainer.setup.device.type == "cuda"
    if strategy.compile and not compiled:
        log.info("trainer.compile=true: compiling only on CUDA; running eagerly on %s", trainer.setup.device)
    return Prepared(trainer, train_loader, val_loader, Freezing(network, frozen_for, compiled))


def head_on_cached_features(
    trainer: Trainer, network: nn.Module, loaders: tuple, batch_size: int, generator: torch.Generator | None
) -> Prepared:
    """Frozen backbone, same input every epoch: compute its features once; epochs then train only the head."""
    set_backbone_trainable(network, False)
    setup, pin = trainer.setup, trainer.setup.device.type == "cuda"
    # in index order, without touching the shuffling generator: the same batches as without the cache
    train_set, val_set = (
        TensorImageDataset(
            *compute_features(network, build_loader(loader.dataset, batch_size, False), setup, trainer.preprocess)
        )
        for loader in loaders
    )
    log.info("head only on cached features: %d train, %d val", len(train_set), len(val_set))
    return Prepared(
        replace(trainer, model=head(network), preprocess=None, frozen_backbone=False),
        build_loader(train_set, batch_size, True, generator, pin),
        build_loader(val_set, batch_size, False, pin_memory=pin),
        None,
    )


class Freezing:
    """Before each epoch: the backbone is frozen for the first `frozen_for` epochs, then trains too."""

    def __init__(self, network: nn.Module, frozen_for: float, compile_model: bool):
        self.network, self.frozen_for, self.frozen, self.compile_model = network, frozen_for, None, compile_model

    def __call__(self, epoch: int, trainer: Trainer) -> Trainer:
        frozen = epoch <= self.frozen_for
        if frozen == self.frozen:
            return trainer
        log.info("epoch %d: backbone %s", epoch, "frozen, head trains" if frozen else "trains with the head")
        self.frozen = frozen
        set_backbone_trainable(self.network, not frozen)
        wrapped = dist.wrap(self.network, trainer.setup.device)  # DDP syncs what trains when it wraps: rewrap
        return replace(trainer, model=torch.compile(wrapped) if self.compile_model else wrapped, frozen_backbone=frozen)
