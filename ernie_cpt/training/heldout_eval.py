"""Held-out evaluation of every task with the current weights (no gradient, no dropout).

Each task reads ``eval_batches`` batches of its held-out split in a fixed order with a fixed
masking seed, so numbers are comparable across steps, stages and schedules. The order is a
seeded permutation of the split, not the split's own order: held-out examples are stored
document by document, so the first batches in stored order came from one or two documents
and measured those documents' label mix (a 0.38 capitalised share against 0.19 over the
split), not the held-out set's.
Statistics are summed over batches and ranks before the task turns them into metrics.

Collectives are unconditional: every rank runs the same number of forwards per task (a rank
whose share is shorter repeats a batch whose statistics count zero; under ZeRO-3 a forward
is itself collective) and all-reduces the same keys in the same order, even when a held-out
split has fewer examples than there are ranks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ernie_cpt.config import TrainConfig
from ernie_cpt.training.engine import all_reduce_sum, device
from ernie_cpt.training.train_module import merge_stats, reduce_stats

EVAL_SEED = 20260101


def eval_order(size: int, limit: int) -> list[int]:
    """The first ``limit`` indices of a fixed permutation of ``range(size)`` (the same on
    every rank, for every step and schedule)."""
    order = np.random.default_rng(EVAL_SEED).permutation(size)
    return [int(i) for i in order[: max(0, limit)]]


def eval_batches(
    dataset: Any, batch_size: int, count: int, rank: int, world_size: int
) -> list[list[int]]:
    """Index lists of this rank's ``count`` batches: its stride of the evaluation order."""
    indices = eval_order(len(dataset), count * batch_size * world_size)[rank::world_size]
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


def padded_batches(
    dataset: Any, batch_size: int, count: int, rank: int, world_size: int
) -> list[tuple[list[int], float]]:
    """(indices, weight) of this rank's batches, padded to the longest rank's number with
    weight-0 repeats of the split's first batch (empty when the split is empty)."""
    own = eval_batches(dataset, batch_size, count, rank, world_size)
    # rank 0's stride is the longest: ceil(evaluated / world) indices, in batches
    evaluated = min(len(dataset), count * batch_size * world_size)
    longest = math.ceil(math.ceil(evaluated / world_size) / batch_size)
    filler = list(range(min(batch_size, len(dataset))))
    return [(b, 1.0) for b in own] + [(filler, 0.0)] * (longest - len(own))


@torch.no_grad()
def evaluate(
    engine: Any,
    data: Any,
    task_ids: Mapping[str, int],
    train: TrainConfig,
    rank: int,
    world_size: int,
) -> dict[str, dict[str, float]]:
    """Metrics per task on its held-out split (tasks with no held-out examples are omitted)."""
    engine.train(False)  # evaluation mode (no dropout)
    results: dict[str, dict[str, float]] = {}
    try:
        for name, task in data.tasks.items():
            summed = task_statistics(
                engine, task, name, data.heldout[name], task_ids, train, rank, world_size
            )
            if summed.get("sample_size", 0) > 0:
                metrics = task.metrics(summed)
                results[name] = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
    finally:
        engine.train()
    return results


def task_statistics(
    engine: Any,
    task: Any,
    name: str,
    dataset: Any,
    task_ids: Mapping[str, int],
    train: TrainConfig,
    rank: int,
    world_size: int,
) -> dict[str, float]:
    """One task's statistics summed over its held-out batches and over ranks (collective)."""
    stats: dict[str, dict[str, float]] = {}
    batches = padded_batches(dataset, train.micro_batch_size, train.eval_batches, rank, world_size)
    for number, (indices, weight) in enumerate(batches):
        generator = torch.Generator().manual_seed(EVAL_SEED + number)
        batch = task.collate(dataset[indices], generator)
        batch["task_type_ids"] = torch.full_like(batch["input_ids"], task_ids[name])
        batch = {k: v.to(device()) for k, v in batch.items()}
        _, losses, _ = engine(batch, [name], 0)
        reduced = reduce_stats(losses)
        merge_stats(stats, {t: {k: v * weight for k, v in s.items()} for t, s in reduced.items()})
    keys = sorted(stats.get(name, {}))  # the same on every rank: every rank ran the same batches
    return (
        dict(zip(keys, all_reduce_sum(stats[name][k] for k in keys), strict=True)) if keys else {}
    )
