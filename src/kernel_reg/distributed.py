"""Several processes (torchrun, DistributedDataParallel): process groups, batch shards, per-example noise
and the global supremum of the supremum penalties.

Every rank holds the same data and the same RNG streams (seeded alike, consumed alike), and works on its
shard of each global batch. So that a run on W processes computes what one process would on the whole
batch, random draws per example are made for the whole batch on every rank and sliced (``Group.draw``),
and a supremum over the batch is taken over the global batch (``Group.supremum_sum``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Group:
    """This process's place among ``world`` training processes (the default: alone)."""

    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank must be in [0, world={self.world}), got {self.rank}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n_global: int) -> slice:
        """This rank's rows of a global batch: equal contiguous shards (a remainder of < world rows is dropped)."""
        per_rank = n_global // self.world
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def draw(self, sample: Callable[[int], torch.Tensor], n_local: int) -> torch.Tensor:
        """Per-example noise: ``sample(count)`` gives (count, ...) rows; every rank draws the global batch's
        rows with the same RNG stream and keeps its own, so the noise of an example is that of one process."""
        if self.world == 1:
            return sample(n_local)
        return sample(n_local * self.world)[self.rank * n_local : (self.rank + 1) * n_local]

    def any(self, flag: torch.Tensor) -> bool:
        """Whether the boolean tensor ``flag`` holds on any rank (a collective decision, so that all ranks
        take the same branch)."""
        if self.world == 1:
            return bool(flag)
        value = flag.detach().to(torch.float32).reshape(1)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def supremum_sum(self, terms: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """sum_j terms[j] where, per class j, the maximiser over the global batch is the one of the rank with
        the largest ``scores[j]`` (ties: the lowest rank). That rank alone keeps the term, times the world
        size, so that DDP's gradient average equals the single-process gradient of sum_j terms[j]."""
        if self.world == 1:
            return terms.sum()
        gathered = [torch.empty_like(scores) for _ in range(self.world)]
        dist.all_gather(gathered, scores.detach().contiguous())
        owner = torch.stack(gathered).argmax(0)
        return self.world * (terms * (owner == self.rank).to(terms.dtype)).sum()


SINGLE = Group()


def setup() -> tuple[Group, torch.device | None]:
    """Join the process group that torchrun describes in the environment (gloo on CPU, NCCL on GPUs):
    this process's ``Group`` and its device (``cuda:LOCAL_RANK``, or None for the configured device).
    Alone (no WORLD_SIZE > 1), returns ``SINGLE`` and touches nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return SINGLE, None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    device = None
    if cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return Group(rank, world), device


def teardown(group: Group) -> None:
    if group.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
