"""Pretrained and local weights: found in the caches, downloaded, loaded with what fits."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
from torch import nn

from imgclf.errors import BadInput, MissingInput
from imgclf.files import load_tensors
from imgclf.models.catalog import timm_cfg

log = logging.getLogger(__name__)


class WeightsNotFound(MissingInput):
    """Pretrained weights were requested and are neither cached nor downloadable."""


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

    cfg = timm_cfg(name)
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
