"""build_model(): the one place networks are created, weights loaded and heads swapped."""
from __future__ import annotations

import logging

import torch
from torch import nn
from torchvision import models as tv_models

log = logging.getLogger(__name__)

# smallest input each architecture accepts: AlexNet's stride-4 conv and three poolings need 63 px
MIN_IMAGE_SIZE = {"alexnet": 63, "vgg16": 32, "vgg16_bn": 32}
ARCHS = tuple(MIN_IMAGE_SIZE)


def build_model(arch: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """Create a torchvision network with its last layer replaced for `num_classes` outputs."""
    if arch not in ARCHS:
        raise ValueError(f"unknown model '{arch}'; choose one of: {', '.join(ARCHS)}")
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes; got {num_classes}")
    weights = tv_models.get_model_weights(arch).DEFAULT if pretrained else None
    model = tv_models.get_model(arch, weights=weights)
    _replace_head(model, num_classes)
    return model


def _replace_head(model: nn.Module, num_classes: int) -> None:
    # AlexNet and VGG end in classifier[-1]: a Linear from 4096 features
    head = model.classifier[-1]
    model.classifier[-1] = nn.Linear(head.in_features, num_classes)
    log.info("replaced head: Linear(%d, %d) -> Linear(%d, %d)", head.in_features, head.out_features,
             head.in_features, num_classes)


def check_image_size(arch: str, image_size: int) -> None:
    """Fail early with a clear message when the input is too small for the network."""
    minimum = MIN_IMAGE_SIZE.get(arch, 1)
    if image_size < minimum:
        raise ValueError(f"model.image_size={image_size} is too small for {arch}; it needs at least {minimum} px")


def load_checkpoint(path) -> dict:
    """Load a checkpoint written by the train stage (tensors and plain types only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """Rebuild the trained network from a checkpoint, weights included, in eval mode."""
    model = build_model(ckpt["arch"], len(ckpt["class_names"]), pretrained=False)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def save_checkpoint(path, state: dict[str, torch.Tensor], **meta) -> None:
    """Write weights plus what is needed to rebuild and preprocess (arch, class_names, image_size, ...)."""
    from .utils import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"model": state, **meta}, tmp)
