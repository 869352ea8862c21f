"""DistributedDataParallel under torchrun: process group, sharded batches, reductions. One process: no-ops."""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as torch_dist
from torch import nn

from imgclf.data.sampling import is_distributed, rank, world_size  # which process: data needs it too

log = logging.getLogger(__name__)


def is_main() -> bool:
    """Rank 0 (or the only process): the one that logs to MLflow and writes files."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (WORLD_SIZE > 1); returns this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return device
    backend = "nccl" if device.type == "cuda" else "gloo"  # gloo: CPU processes (and tests)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    torch_dist.init_process_group(backend)
    log.info("rank %d of %d (%s) on %s", rank(), world_size(), backend, device)
    return device


def teardown() -> None:
    if is_distributed():
        torch_dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DDP (or torch.compile) wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP over the parameters that train now; call again after (un)freezing: DDP fixes its set at wrap time."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(unwrap(model), device_ids=[device] if device.type == "cuda" else None)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum plain numbers over ranks (one collective); returns them unchanged in one process."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch_dist.all_reduce(t)
    return t.tolist()


def shard_weight(n: int, bad: bool, device: torch.device) -> tuple[float, bool]:
    """Loss weight of this rank's `n` samples (n * world / global batch; DDP averages the gradients), and
    whether any rank saw a non-finite loss, so that every rank stops at the same step."""
    if not is_distributed():
        return 1.0, bad
    total, bad_ranks = all_reduce_sum([n, float(bad)], device)
    return n * world_size() / total, bad_ranks > 0
