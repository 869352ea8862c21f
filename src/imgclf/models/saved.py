"""model.pt, the trained network: saved with what rebuilds it, loaded weights-only."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from imgclf.errors import MissingInput
from imgclf.files import load_tensors
from imgclf.models.build import build_model


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
    from imgclf.files import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"model": state, **meta}, tmp)
