"""build_model(): the one place networks are created, weights loaded and heads swapped."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from imgclf.errors import BadInput
from imgclf.models.catalog import check_name
from imgclf.models.weights import load_weights, pretrained_file

log = logging.getLogger(__name__)


def build_model(
    name: str,
    num_classes: int,
    *,
    source: str = "torchvision",
    pretrained: bool = False,
    weights: str | None = None,
    download: bool = True,
    dropout: float | None = None,
) -> nn.Module:
    """Create `name`, load ImageNet (`pretrained`) or local (`weights`) weights, replace the head for `num_classes`.

    `dropout` overrides the architecture's dropout before the head (None keeps its default).
    """
    if num_classes < 2:
        raise BadInput(f"a classifier needs at least 2 classes; got {num_classes}")
    model = _create(source, name, dropout)
    replace_head(model, num_classes)  # first: a head of the right size (an earlier run's) loads, ImageNet's does not
    if weights:
        load_weights(model, Path(weights).expanduser(), name)
    elif pretrained:
        load_weights(model, pretrained_file(source, name, download), name)
    return model


def _create(source: str, name: str, dropout: float | None = None) -> nn.Module:
    check_name(source, name)
    extra = {} if dropout is None else {"drop_rate" if source == "timm" else "dropout": float(dropout)}
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False, **extra)
    from torchvision import models as tv_models

    return tv_models.get_model(name, weights=None, **extra)


def head(model: nn.Module) -> nn.Module:
    """The last layer, the one fine-tuning replaces."""
    return model.get_classifier() if hasattr(model, "get_classifier") else model.classifier[-1]


def replace_head(model: nn.Module, num_classes: int) -> None:
    old = head(model)
    if hasattr(model, "reset_classifier"):  # timm models know their own head
        model.reset_classifier(num_classes)
    else:
        model.classifier[-1] = nn.Linear(old.in_features, num_classes)
    log.info("replaced head %s -> %s", old, head(model))


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of the head: what a frozen backbone computes (and what head-only training can cache)."""
    if hasattr(model, "forward_head"):  # timm
        return model.forward_head(model.forward_features(x), pre_logits=True)
    x = torch.flatten(model.avgpool(model.features(x)), 1)
    return model.classifier[:-1](x)


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze every parameter outside the head (the head always trains)."""
    head_params = {id(p) for p in head(model).parameters()}
    for p in model.parameters():
        p.requires_grad_(trainable or id(p) in head_params)


def check_batch_for_norm(model: nn.Module, name: str, batch_size: int, processes: int) -> None:
    """BadInput when every training batch would give a process one image and the network has batch norm, which
    cannot train on one (a partial last batch of one is left out: imgclf.data.sampling)."""
    if batch_size < 2 * processes and any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in model.modules()):
        raise BadInput(
            f"trainer.batch_size={batch_size} gives each of {processes} process(es) batches of one image, and "
            f"{name} has batch norm, which cannot train on one: use trainer.batch_size >= {2 * processes}"
        )
