"""model.pt, the trained network: saved with what rebuilds it, loaded weights-only."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgclf.errors import BadInput, MissingInput
from imgclf.files import load_tensors
from imgclf.models.build import build_model

# keys of `model` that choose where weights come from, not which network is trained on what: they may differ
UNTRAINED = frozenset({"download", "inputs"})


def load_checkpoint(path, model: Mapping[str, Any] | None = None) -> dict:
    """Load a checkpoint written by the train stage (tensors and plain types only); with `model` (the config's
    section), one line when the checkpoint was trained with another: a stage after train reads the network from the
    checkpoint, so a `model` key it is given (an override, an edited params.yaml not trained yet) would silently not
    apply to what it evaluates or exports."""
    if not Path(path).is_file():
        raise MissingInput(f"{path} not found; run the train stage first (dvc repro train)")
    ckpt = load_tensors(path)
    trained = (ckpt.get("config") or {}).get("model")
    if model is not None and isinstance(trained, Mapping):
        changed = [k for k in sorted({*trained, *model} - UNTRAINED) if trained.get(k) != model.get(k)]
        if changed:
            key = changed[0]
            raise BadInput(
                f"model.{key}={_shown(model.get(key))}, but {path} was trained with model.{key}="
                f"{_shown(trained.get(key))}: train it first (dvc repro), or drop the override"
            )
    return ckpt


def _shown(value: Any) -> str:
    """A config value as it is typed on the command line: null, true, [0.5, 0.5]."""
    return json.dumps(value) if not isinstance(value, str) else value


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
