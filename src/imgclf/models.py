"""build_model(): the one place networks are created, pretrained weights found and loaded, and heads swapped."""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from imgclf.errors import BadInput, MissingInput
from imgclf.serving import INTERPOLATIONS, RESIZE_MODES
from imgclf.utils import load_tensors

log = logging.getLogger(__name__)

SOURCES = ("torchvision", "timm")
TORCHVISION_ARCHS = ("alexnet", "vgg16", "vgg16_bn")  # networks whose head is classifier[-1]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # when a timm model has no cfg


class WeightsNotFound(MissingInput):
    """Pretrained weights were requested and are neither cached nor downloadable."""


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


def check_name(source: str, name: str) -> None:
    """One line naming what is valid, for an unknown source or network."""
    if source == "timm":
        import timm

        if not timm.is_model(name):
            raise BadInput(
                f"unknown timm model '{name}'; list them with: python -c \"import timm; "
                f"print(timm.list_models('{name.split('.')[0][:4]}*'))\""
            )
    elif source != "torchvision":
        raise BadInput(f"unknown model.source '{source}'; choose one of: {', '.join(SOURCES)}")
    elif name not in TORCHVISION_ARCHS:
        raise BadInput(
            f"unknown model '{name}'; choose one of: {', '.join(TORCHVISION_ARCHS)}, "
            "or model=timm model.name=<any timm model>"
        )


def _create(source: str, name: str, dropout: float | None = None) -> nn.Module:
    check_name(source, name)
    extra = {} if dropout is None else {"drop_rate" if source == "timm" else "dropout": float(dropout)}
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False, **extra)
    from torchvision import models as tv_models

    return tv_models.get_model(name, weights=None, **extra)


def _timm_cfg(name: str) -> dict:
    """timm's pretrained_cfg for `name` (weights location, input size, mean, std), without building the model."""
    from timm.models import get_pretrained_cfg

    check_name("timm", name)
    cfg = get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}


def pretrained_file(source: str, name: str, download: bool = True) -> Path:
    """The local file of `name`'s default ImageNet weights: from the cache, else downloaded (`download`)."""
    return _timm_file(name, download) if source == "timm" else _torchvision_file(name, download)


def _torchvision_file(name: str, download: bool) -> Path:
    from torchvision import models as tv_models

    url = tv_models.get_model_weights(name).DEFAULT.url
    return _cached_url(url, name, download)


def _cached_url(url: str, name: str, download: bool) -> Path:
    """torch.hub's cache file for `url` (where torchvision and timm's URL weights live): downloaded if allowed."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if path.is_file():
        return path
    hint = f"download {url} to {path} (or set TORCH_HOME), or set model.weights=/path/to/file.pth"
    if not download:
        raise WeightsNotFound(f"pretrained weights for {name} not found at {path}; {hint}")
    log.info("downloading %s to %s", url, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = re.search(r"-([a-f0-9]{6,})\.", path.name)  # torchvision names files <arch>-<sha256 prefix>.pth
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix.group(1) if prefix else None)
    except Exception as exc:  # no network, proxy, bad hash: one line, never random weights instead
        raise WeightsNotFound(
            f"pretrained weights for {name} not found at {path} and the download failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); {hint}"
        ) from None
    return path


def hf_cache_dir() -> Path:
    """Hugging Face's hub cache, read from the environment now (HF_HUB_CACHE, HF_HOME), as huggingface_hub does."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _timm_file(name: str, download: bool) -> Path:
    from huggingface_hub import try_to_load_from_cache

    cfg = _timm_cfg(name)
    repo = cfg.get("hf_hub_id")
    if not repo:
        if not cfg.get("url"):
            raise WeightsNotFound(
                f"timm model {name} has no pretrained weights to download; "
                "set model.weights=/path/to/file or model.pretrained=false"
            )
        return _cached_url(cfg["url"], f"timm model {name}", download)
    cache = hf_cache_dir()
    for filename in ("model.safetensors", "pytorch_model.bin"):  # timm's hub repos hold one or the other
        found = try_to_load_from_cache(repo, filename, cache_dir=cache)
        if isinstance(found, str):
            return Path(found)
    hint = (
        f"run `hf download {repo}` where there is internet and copy {cache} here (or set HF_HOME), "
        "or set model.weights=/path/to/model.safetensors"
    )
    if not download:
        raise WeightsNotFound(
            f"pretrained weights for timm model {name} not found in {cache} (models--{repo.replace('/', '--')}); {hint}"
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, "model.safetensors", cache_dir=cache))
    except Exception as exc:
        raise WeightsNotFound(
            f"pretrained weights for timm model {name} not in {cache} and the download failed "
            f"({type(exc).__name__}); {hint}"
        ) from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .pth/.pt file (plain state dict, our checkpoint, or {'state_dict': ...})."""
    if not path.is_file():
        raise WeightsNotFound(f"model.weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = load_tensors(path)
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(f"cannot read weights from {path}: {str(exc).splitlines()[0]}") from None
    for key in ("model", "state_dict"):  # an imgclf checkpoint, or a common training-script layout
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise BadInput(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def load_weights(model: nn.Module, path: Path, name: str) -> None:
    """Load the tensors of `path` that fit `model`; log missing, unexpected and reshaped keys (timm's habit)."""
    state = read_state_dict(path)
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    reshaped = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    if not fits:
        raise BadInput(f"no tensor in {path} fits {name}; is it a {name} checkpoint?")
    result = model.load_state_dict(fits, strict=False)
    log.info("loaded %d/%d tensors of %s from %s", len(fits), len(own), name, path)
    missing = [k for k in result.missing_keys if k not in reshaped]
    for label, keys in (
        ("missing", missing),
        ("unexpected", sorted(set(state) - set(own))),
        ("skipped (shape differs)", reshaped),
    ):
        if keys:
            log.info("%s keys (%d): %s", label, len(keys), ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else ""))


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


def preprocessing(source: str, name: str) -> Preprocessing:
    """Input size, mean, std and interpolation from the weights' metadata (torchvision weights / timm cfg)."""
    check_name(source, name)
    if source == "timm":
        cfg = _timm_cfg(name)
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
    if not 0.1 <= spec.crop_pct <= 1.0:
        raise BadInput(f"model.crop_pct must be in [0.1, 1] (the share of the resized image kept); got {crop_pct}")
    if resize not in RESIZE_MODES:
        raise BadInput(f"unknown model.resize '{resize}'; choose one of: {', '.join(RESIZE_MODES)}")
    spec.resize = resize
    spec.mean, spec.std = list(mean or spec.mean), list(std or spec.std)
    spec.interpolation = interpolation or spec.interpolation
    if spec.interpolation not in INTERPOLATIONS:
        raise BadInput(
            f"unknown model.interpolation '{spec.interpolation}'; choose one of: {', '.join(INTERPOLATIONS)}"
        )
    if spec.image_size < spec.min_size:
        raise BadInput(
            f"model.image_size={spec.image_size} is too small for {name}; it needs at least {spec.min_size} px"
        )
    return spec


def load_checkpoint(path) -> dict:
    """Load a checkpoint written by the train stage (tensors and plain types only)."""
    if not Path(path).is_file():
        raise MissingInput(f"{path} not found; run the train stage first (dvc repro train)")
    return load_tensors(path)


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """Rebuild the trained network from a checkpoint, weights included, in eval mode."""
    model = build_model(ckpt["arch"], len(ckpt["class_names"]), source=ckpt.get("source", "torchvision"))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def save_checkpoint(path, state: dict[str, torch.Tensor], **meta) -> None:
    """Write weights plus what is needed to rebuild and preprocess (arch, class_names, image_size, ...)."""
    from imgclf.utils import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"model": state, **meta}, tmp)


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze every parameter outside the head (the head always trains)."""
    head_params = {id(p) for p in head(model).parameters()}
    for p in model.parameters():
        p.requires_grad_(trainable or id(p) in head_params)
