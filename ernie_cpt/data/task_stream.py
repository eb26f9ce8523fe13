"""Batches for training: an endless, resumable, rank-sharded stream per task.

Each epoch visits the task's examples in a permutation seeded by (seed, task, epoch); rank r
takes every world-th index. The whole position is two integers (epoch, position), saved
with each checkpoint, so a resumed run reads exactly the batches the original would have.

Length bucketing (``bucket_size`` > 1): the rank's order of an epoch is cut into windows of
``bucket_size`` batches; inside a window the examples are sorted by length (stable), cut
into batches, and the batches are shuffled (seeded by seed, task, epoch, window). A batch
then holds examples of nearly one length, so padding (compute spent on nothing) nearly
vanishes, while which examples an epoch visits, and in which window, stay random. The order
is still a pure function of (seed, task, epoch, rank), so the cursor alone resumes it. The
window grid of an epoch starts where that epoch's first whole batch starts (the few
examples that complete the previous epoch's last batch are left in place), so batches and
sorted runs stay aligned epoch after epoch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pretrain_tasks.base import stable_seed


def example_lengths(dataset: Any, column: str = "input_ids") -> np.ndarray:
    """(N,) int64: the length of ``column`` in every example, read without decoding rows.

    Arrow-backed datasets (``datasets.Dataset``) answer from the list offsets; anything else
    (a list of dicts, a dict-like test double) is read row by row.
    """
    table = getattr(dataset, "data", None)
    if table is not None and hasattr(table, "column"):
        import pyarrow.compute as pc

        lengths = pc.list_value_length(table.column(column)).to_numpy(zero_copy_only=False)
        indices = getattr(dataset, "_indices", None)  # a select()/shuffle() view
        if indices is not None:
            lengths = lengths[indices.column(0).to_numpy()]
        return lengths.astype(np.int64)
    return np.array([len(row) for row in dataset[column]], dtype=np.int64)


def bucketed(
    order: np.ndarray,
    lengths: np.ndarray,
    batch_size: int,
    bucket_size: int,
    offset: int,
    seed: int,
) -> np.ndarray:
    """``order`` with each window of ``bucket_size`` batches sorted by length into batches,
    the batches of a window shuffled; the grid starts at ``offset`` (< batch_size)."""
    window = batch_size * bucket_size
    pieces = [order[:offset]]
    for start in range(offset, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches = [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        whole = len(chunk) // batch_size  # a last partial batch stays last (epoch tail)
        shuffle = np.random.default_rng(stable_seed(seed, "window", start)).permutation(whole)
        pieces += [batches[i] for i in shuffle] + batches[whole:]
    return np.concatenate(pieces) if pieces else order


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
        bucket_size: int = 0,
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
        self.bucket_size = bucket_size
        self.epoch = 0
        self.position = 0
        # (epoch, order): one attribute, so a prefetching thread never sees a torn pair
        self._cached: tuple[int, np.ndarray] = (-1, np.empty(0, dtype=np.int64))
        self._lengths = example_lengths(dataset) if bucket_size > 1 else None

    def order(self, epoch: int) -> np.ndarray:
        """This rank's example indices for ``epoch``."""
        cached_epoch, order = self._cached
        if epoch != cached_epoch:
            per_rank = len(self.dataset) // self.world_size
            permutation = np.random.default_rng(
                stable_seed(self.seed, self.name, epoch)
            ).permutation(len(self.dataset))
            order = permutation[: per_rank * self.world_size][self.rank :: self.world_size]
            if self._lengths is not None:
                # examples that complete the previous epoch's last batch: -epoch*n mod batch
                offset = min((-epoch * per_rank) % self.batch_size, len(order))
                seed = stable_seed(self.seed, self.name, epoch, self.rank)
                order = bucketed(
                    order, self._lengths, self.batch_size, self.bucket_size, offset, seed
                )
            self._cached = (epoch, order)
        return order

    def peek(self, cursor: tuple[int, int] | None = None) -> tuple[list[int], tuple[int, int]]:
        """(indices of the batch at ``cursor`` (default: the current one), the cursor after
        it); the stream does not move: a pure function of the cursor."""
        epoch, position = cursor if cursor is not None else (self.epoch, self.position)
        indices: list[int] = []
        while len(indices) < self.batch_size:
            order = self.order(epoch)
            take = order[position : position + self.batch_size - len(indices)]
            indices.extend(int(i) for i in take)
            position += len(take)
            if position >= len(order):
                epoch, position = epoch + 1, 0
        return indices, (epoch, position)

    def next_indices(self) -> list[int]:
        """The indices of the next batch, continuing into the next epoch when needed."""
        indices, (self.epoch, self.position) = self.peek()
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
