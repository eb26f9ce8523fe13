"""Held-out evaluation of every task with the current weights (no gradient, no dropout).

Each task reads the first ``eval_batches`` batches of its held-out split in a fixed order
with a fixed masking seed, so numbers are comparable across steps, stages and schedules.
Statistics are summed over batches and ranks before the task turns them into metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ernie_cpt.config import TrainConfig
from ernie_cpt.training.engine import all_reduce_sum, device
from ernie_cpt.training.train_module import merge_stats, reduce_stats

EVAL_SEED = 20260101


def eval_batches(
    dataset: Any, batch_size: int, count: int, rank: int, world_size: int
) -> list[list[int]]:
    """Index lists of the first ``count`` batches of this rank's share, in dataset order."""
    indices = list(range(rank, len(dataset), world_size))
    return [
        indices[i : i + batch_size]
        for i in range(0, min(len(indices), count * batch_size), batch_size)
    ]


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
            dataset = data.heldout[name]
            stats: dict[str, dict[str, float]] = {}
            for number, indices in enumerate(
                eval_batches(dataset, train.micro_batch_size, train.eval_batches, rank, world_size)
            ):
                generator = torch.Generator().manual_seed(EVAL_SEED + number)
                examples = dataset[indices]
                batch = task.collate(examples, generator)
                batch["task_type_ids"] = torch.full_like(batch["input_ids"], task_ids[name])
                batch = {k: v.to(device()) for k, v in batch.items()}
                _, losses, _ = engine(batch, [name], 0)
                merge_stats(stats, reduce_stats(losses))
            keys = sorted(stats.get(name, {}))
            summed = (
                dict(zip(keys, all_reduce_sum(stats[name][k] for k in keys), strict=True))
                if keys
                else {}
            )
            if summed.get("sample_size", 0) > 0:
                metrics = task.metrics(summed)
                results[name] = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
    finally:
        engine.train()
    return results
