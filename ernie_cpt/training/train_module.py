"""The module DeepSpeed wraps: model + tasks' losses (+ loss weighting) -> one scalar.

``forward(batch, task_names, step)`` runs ONE encoder pass and every listed task's loss on
it. Heads of tasks absent from the batch are not run: they get no gradient. At ZeRO 0
DeepSpeed gives a parameter without a gradient a zero one before its all-reduce, ZeRO 1-2
fill the missing part of their flat gradient partition with zeros
(``zero_optimization.ignore_unused_parameters``, on by default) and ZeRO 3 reduces only the
gradients produced; so an idle head costs nothing in forward or backward, every stage
trains like ZeRO 0 (tests/test_end_to_end.py), and the optimizer sees a zero gradient for it
as before (the zero-weighted pass through each idle head that used to ensure this added
27% forward and 39% backward operations at 2 layers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ernie_cpt.model import MultiTaskModel
from ernie_cpt.model.sparse_top import TOP_KEYS
from pretrain_tasks.base import PretrainTask, TaskLoss


class TrainModule(nn.Module):
    """Model + loss computation; ``weighting`` (optional) turns task losses into one loss."""

    def __init__(
        self,
        model: MultiTaskModel,
        tasks: Mapping[str, PretrainTask],
        weightings: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.weightings = nn.ModuleDict(dict(weightings or {}))
        self.tasks = dict(tasks)  # plain objects: not part of the module tree

    def forward(
        self,
        batch: Mapping[str, Tensor],
        task_names: Sequence[str],
        step: int = 0,
        weighting: str | None = None,
        padded: bool | None = None,
    ) -> tuple[Tensor, dict[str, TaskLoss], dict[str, float]]:
        """(loss to backward, per-task losses, per-task weights) for one micro-batch.

        ``weighting`` names the loss-balancing method (a key of ``weightings``); None sums
        the task losses (evaluation). ``padded``: whether the batch has padding, when the
        caller knows it from the host batch (the model then never reads the mask back).
        """
        encoded = self.model(
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            batch["task_type_ids"],
            task_names,
            padded=padded,
            top=top_columns(batch),
        )
        losses = {
            name: self.tasks[name].loss(self.model.heads[name], encoded.for_task(name), batch)
            for name in task_names
        }
        means = {name: loss.mean() for name, loss in losses.items()}
        if weighting is not None:
            total, weights = self.weightings[weighting].combine(
                means, encoded.sequence_output, step
            )
        else:
            total, weights = torch.stack(list(means.values())).sum(), dict.fromkeys(means, 1.0)
        if encoded.extra_loss is not None:  # a sharing architecture's penalty (+ zero touch)
            total = total + encoded.extra_loss
        return total, losses, weights


def top_columns(batch: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """The batch's ``sparse_top`` row columns (from ``build_micro_batch``), if it has them."""
    if TOP_KEYS[0] not in batch:
        return None
    return {key: batch[key] for key in TOP_KEYS}


def reduce_stats(losses: Mapping[str, TaskLoss]) -> dict[str, dict[str, float]]:
    """Detach per-task statistics to floats (summed later over micro-batches and ranks)."""
    out: dict[str, dict[str, float]] = {}
    for name, loss in losses.items():
        stats = {key: float(value) for key, value in loss.stats.items()}
        stats["sample_size"] = float(loss.sample_size)
        out[name] = stats
    return out


def merge_stats(into: dict[str, dict[str, float]], new: Mapping[str, Mapping[str, float]]) -> None:
    """Add ``new`` statistics into ``into`` (per task, per key)."""
    for task, stats in new.items():
        bucket = into.setdefault(task, {})
        for key, value in stats.items():
            bucket[key] = bucket.get(key, 0.0) + value


def describe(module: nn.Module) -> dict[str, Any]:
    """Parameter counts (shared tied weights counted once)."""
    seen, total, trainable = set(), 0, 0
    for param in module.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return {"parameters": total, "trainable": trainable}
