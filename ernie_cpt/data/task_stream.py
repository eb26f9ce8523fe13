"""Batches for training: an endless, resumable, rank-sharded stream per task.

Each epoch visits the task's examples in a permutation seeded by (seed, task, epoch); rank r
takes every world-th index. The whole position is two integers (epoch, position), saved
with each checkpoint, so a resumed run reads exactly the batches the original would have.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pretrain_tasks.base import stable_seed


class TaskStream:
    """Endless batches of one task's examples for one rank."""

    def __init__(
        self,
        dataset: Any,
        name: str,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(dataset) < world_size:
            raise ValueError(
                f"task {name!r} has {len(dataset)} examples, fewer than {world_size} ranks"
            )
        self.dataset = dataset
        self.name = name
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.position = 0
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    def order(self, epoch: int) -> np.ndarray:
        """This rank's example indices for ``epoch``."""
        if epoch != self._order_epoch:
            per_rank = len(self.dataset) // self.world_size
            permutation = np.random.default_rng(
                stable_seed(self.seed, self.name, epoch)
            ).permutation(len(self.dataset))
            self._order = permutation[: per_rank * self.world_size][self.rank :: self.world_size]
            self._order_epoch = epoch
        return self._order

    def next_indices(self) -> list[int]:
        """The indices of the next batch, continuing into the next epoch when needed."""
        indices: list[int] = []
        while len(indices) < self.batch_size:
            order = self.order(self.epoch)
            take = order[self.position : self.position + self.batch_size - len(indices)]
            indices.extend(int(i) for i in take)
            self.position += len(take)
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
        return indices

    def next_examples(self) -> dict[str, list[Any]]:
        """The next batch as columns (column -> list of values)."""
        return self.dataset[self.next_indices()]

    def state(self) -> dict[str, int]:
        """The resumable position."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: Mapping[str, int]) -> None:
        """Continue from a saved position."""
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
