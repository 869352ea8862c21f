"""What a network expects as input, from its weights' metadata and the config."""

from __future__ import annotations

import math
from dataclasses import dataclass

from imgclf.errors import BadInput
from imgclf.models.catalog import IMAGENET_MEAN, IMAGENET_STD, check_name, timm_cfg


@dataclass
class Preprocessing:
    """What the network expects as input, from its weights' metadata unless the config overrides it."""

    image_size: int
    mean: list[float]
    std: list[float]
    interpolation: str = "bilinear"
    min_size: int = 1
    crop_pct: float = 1.0  # image_size / resize_size: the share of the resized image the centre crop keeps
    resize: str = "crop"  # crop: shorter side to resize_size, centre crop; squash: the whole image to the square

    @property
    def resize_size(self) -> int:
        return math.floor(self.image_size / self.crop_pct)  # timm's scale_size; torchvision's 224 / 0.875 = 256


def preprocessing(source: str, name: str) -> Preprocessing:
    """Input size, mean, std and interpolation from the weights' metadata (torchvision weights / timm cfg)."""
    check_name(source, name)
    if source == "timm":
        cfg = timm_cfg(name)
        return Preprocessing(
            int(cfg.get("input_size", (3, 224, 224))[-1]),
            list(cfg.get("mean", IMAGENET_MEAN)),
            list(cfg.get("std", IMAGENET_STD)),
            cfg.get("interpolation") or "bicubic",
            crop_pct=float(cfg.get("crop_pct") or 0.875),
        )
    from torchvision import models as tv_models

    weights = tv_models.get_model_weights(name).DEFAULT
    t = weights.transforms()
    return Preprocessing(
        int(t.crop_size[0]),
        list(t.mean),
        list(t.std),
        t.interpolation.value,
        int(weights.meta.get("min_size", (1, 1))[0]),
        crop_pct=t.crop_size[0] / t.resize_size[0],
    )


def resolve_preprocessing(
    source: str,
    name: str,
    image_size=None,
    mean=None,
    std=None,
    interpolation=None,
    *,
    crop_pct=None,
    resize: str = "crop",
) -> Preprocessing:
    """The weights' preprocessing with each config value that is not null taking precedence; checks the size."""
    spec = preprocessing(source, name)
    spec.image_size = int(image_size or spec.image_size)
    spec.crop_pct = float(crop_pct or spec.crop_pct)
    spec.resize = resize
    spec.mean, spec.std = list(mean or spec.mean), list(std or spec.std)
    spec.interpolation = interpolation or spec.interpolation
    if spec.image_size < spec.min_size:
        raise BadInput(
            f"model.image_size={spec.image_size} is too small for {name}; it needs at least {spec.min_size} px"
        )
    return spec
