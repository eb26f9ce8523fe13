"""Soft (regularisation-based) parameter sharing: each task owns a copy of the top layers,
pulled towards the mean of the copies by an L2 penalty (mean-constrained multi-task
learning: Evgeniou & Pontil, "Regularized multi-task learning", KDD 2004; for neural
networks Duong et al., "Low Resource Dependency Parsing: Cross-lingual Parameter Sharing
in a Neural Network Parser", ACL 2015).

    penalty = lambda * sum_t sum_p || p_t - mean_s p_s ||^2

over every parameter p of the task columns (all tasks, present in the step or not, so a
column idle in a stage is still pulled towards the others). There are no gates: token-
and sentence-level tasks alike read their own column's full (B, T, H) output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ernie_cpt.model.sharing.base import Routed, Stack, check_levels

KIND = "soft"


class SoftSharing(nn.Module):
    """One column (a copy of the top layers) per task and the mean-constrained penalty."""

    def __init__(
        self, layers: Sequence[nn.Module], levels: Mapping[str, str], penalty: float
    ) -> None:
        super().__init__()
        self.levels = check_levels(levels)
        self.penalty = float(penalty)
        # task -> Stack of the K top layers, all starting from the same (copied) weights.
        self.columns = nn.ModuleDict({task: Stack(layers) for task in self.levels})

    def forward(
        self, hidden: Tensor, mask: Tensor | None, token_mask: Tensor, tasks: Sequence[str]
    ) -> Routed:
        """hidden (B, T, H) -> each requested task's column output (B, T, H), + penalty."""
        outputs = {task: self.columns[task](hidden, mask) for task in tasks}
        penalty = self.penalty * sum(self.distances_squared().values())
        return Routed(outputs, {}, penalty)

    def distances_squared(self) -> dict[str, Tensor]:
        """task -> sum_p ||p_task - mean p||^2 (differentiable)."""
        names = list(self.columns)
        total = dict.fromkeys(names, 0.0)
        per_task = [dict(self.columns[t].named_parameters()) for t in names]
        for key in per_task[0]:
            stacked = torch.stack([params[key] for params in per_task])  # (n_tasks, *shape)
            diff = (stacked - stacked.mean(0, keepdim=True)).float()
            squared = diff.pow(2).reshape(len(names), -1).sum(1)  # (n_tasks,)
            for i, task in enumerate(names):
                total[task] = total[task] + squared[i]
        return total

    def telemetry(self) -> dict[str, Any]:
        """Each column's L2 distance to the mean of the columns."""
        with torch.no_grad():
            return {"distance": {t: float(v) ** 0.5 for t, v in self.distances_squared().items()}}


def build(
    layers: Sequence[nn.Module], levels: Mapping[str, str], settings: Any, **_: Any
) -> SoftSharing:
    """The soft-sharing module over copies of ``layers``."""
    return SoftSharing(layers, levels, settings.penalty)
