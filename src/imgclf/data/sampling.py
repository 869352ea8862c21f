"""Which samples each process gets: global batches split across ranks, evaluation shares."""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch.utils.data import Sampler

from imgclf.errors import BadInput


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return torch_dist.get_rank() if is_distributed() else 0


class ShardedBatchSampler(Sampler[list[int]]):
    """Global batches from one seeded permutation, each split across ranks (rank r takes every world-th index).

    With one process it yields whole batches: a run on N processes sees the same global batches as a run on one.
    A last batch smaller than the world size is dropped (only when distributed) so no rank gets an empty batch,
    and a last training batch that would give a rank a single image (batch norm cannot train on one) is dropped too.
    With `weights` (one per sample) an epoch is n draws with replacement in proportion to them, from the same
    seeded generator (data.balance=sampler: every class equally often; deterministic, and resumed with it).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None = None,
        rank: int = 0,
        world_size: int = 1,
        *,
        weights: torch.Tensor | None = None,
    ):
        if batch_size < world_size:
            raise BadInput(f"trainer.batch_size={batch_size} is smaller than the {world_size} processes")
        self.n, self.batch_size, self.shuffle, self.generator = n, batch_size, shuffle, generator
        self.rank, self.world, self.weights = rank, world_size, weights

    def _batches(self) -> list[list[int]]:
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=self.generator).tolist()
        elif self.shuffle:
            order = torch.randperm(self.n, generator=self.generator).tolist()
        else:
            order = list(range(self.n))
        batches = [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        return [b for b in batches if len(b) >= self._least()]

    def _least(self) -> int:
        """The fewest images a partial last batch needs: two per rank when it trains, one when it evaluates."""
        return min(self.batch_size, self.world * (2 if self.shuffle or self.weights is not None else 1))

    def __iter__(self):
        for batch in self._batches():
            yield batch[self.rank :: self.world]

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest >= self._least() else 0)


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """n / (classes x count) per class (scikit-learn's "balanced"): each class weighs as much in the loss as if all
    had the same count; a class with no training image gets weight 0."""
    counts = torch.bincount(labels, minlength=n_classes).double()
    return torch.where(counts > 0, len(labels) / (n_classes * counts.clamp(min=1)), 0.0).float()


def sample_weights(labels: torch.Tensor) -> torch.Tensor:
    """1 / (its class's count) per sample: weighted draws give every class the same share of an epoch."""
    counts = torch.bincount(labels).double()
    return (1.0 / counts[labels]).double()


def shard_for_eval(n: int, batch_size: int) -> list[list[int]]:
    """This rank's share of an evaluation set, in batches; shares differ by at most one and cover every sample."""
    idx = list(range(rank(), n, world_size()))
    return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
