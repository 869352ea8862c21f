"""Seeding every random stream, and the device a run trains on."""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING

from imgclf.errors import BadInput

if TYPE_CHECKING:
    import torch


DEVICES = ("auto", "cpu", "cuda")


def seed_everything(seed: int, deterministic: bool = True) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for data shuffling."""
    import numpy as np
    import torch  # imported here: fetch and split never need torch, and it costs them seconds

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        # cuBLAS needs this workspace setting for deterministic matmuls on CUDA
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def resolve_device(name: str) -> torch.device:
    """Map `auto|cpu|cuda` to a torch device; `cuda` without CUDA is an error, not a fallback."""
    import torch

    if name not in DEVICES:
        raise BadInput(f"unknown trainer.device '{name}'; choose one of: {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BadInput("trainer.device=cuda but no CUDA device is available; use trainer.device=auto or cpu")
    return torch.device(name)
