"""DistributedDataParallel under torchrun or `srun`: process group, sharded batches, reductions. One process:
no-ops."""

from __future__ import annotations

import logging
import os
import subprocess

import torch
import torch.distributed as torch_dist
from torch import nn

from imgclf.data.sampling import is_distributed, rank, world_size  # which process: data needs it too

log = logging.getLogger(__name__)


def is_main() -> bool:
    """Rank 0 (or the only process): the one that logs to MLflow and writes files."""
    return rank() == 0


def from_slurm() -> None:
    """A task of a SLURM job step with several tasks (`srun`, or submitit's `tasks_per_node`) and no torchrun: the
    rendezvous torchrun would describe, from SLURM's variables. The batch script itself (SLURM_NTASKS but no step)
    stays one process. MASTER_ADDR/MASTER_PORT set by the user win; the port otherwise follows the job and step."""
    tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1"))
    if "WORLD_SIZE" in os.environ or tasks <= 1:
        return
    job, step = int(os.environ["SLURM_JOB_ID"]), int(os.environ.get("SLURM_STEP_ID", "0"))
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ["SLURM_STEP_NODELIST"]  # "gpu[01-04]": scontrol expands it, as SLURM's docs do
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True)
        os.environ["MASTER_ADDR"] = hosts.stdout.split()[0]  # the step's first node runs task 0
    os.environ.setdefault("MASTER_PORT", str(20000 + (job * 16 + step) % 40000))
    os.environ.update(
        RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=str(tasks), LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0")
    )


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun (or a SLURM step, `from_slurm`) describes (WORLD_SIZE > 1); returns this
    rank's device."""
    from_slurm()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return device
    backend = "nccl" if device.type == "cuda" else "gloo"  # gloo: CPU processes (and tests)
    if device.type == "cuda":  # a task that sees only its own GPU (--gpus-per-task) has it as cuda:0
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
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
