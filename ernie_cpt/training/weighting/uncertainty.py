"""Homoscedastic uncertainty weighting: Kendall, Gal & Cipolla, "Multi-Task Learning Using
Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018.

One learnable log-variance s_i = log sigma_i^2 per task and L = sum_i exp(-s_i) L_i + s_i.

On the 1/2 factor: the paper's regression form is L_i / (2 sigma_i^2) + log sigma_i =
(exp(-s_i) L_i + s_i) / 2, its classification form (eq. 10) L_i / sigma_i^2 + log sigma_i =
exp(-s_i) L_i + s_i / 2. We use exp(-s_i) L_i + s_i, i.e. the regression form times 2 (no
1/2 factor; the form most re-implementations use for every task, LibMTL's UW up to that
constant): the optimum is s_i = log L_i, so each task's effective weight exp(-s_i) tends to
1 / L_i. The classification form would put it at s_i = log 2 L_i, i.e. half the weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ernie_cpt.training.weighting.base import WeightingModule
from schedules import options


@dataclass(frozen=True)
class UncertaintySettings(options.Settings):
    """Options of ``uncertainty``: the starting log-variance s_i of every task."""

    initial_log_variance: float = 0.0


class UncertaintyWeighting(WeightingModule):
    """Learnable log-variances, optimised by the run's optimizer with the model.

    Keep them out of weight decay if you can: decay pulls every s_i towards 0 (weight 1).
    """

    Settings: ClassVar[type] = UncertaintySettings

    def __init__(self, tasks: Sequence[str], settings: UncertaintySettings | None = None) -> None:
        super().__init__(tasks)
        self.settings = settings or UncertaintySettings()
        self.log_variance = nn.Parameter(
            torch.full((len(self.tasks),), float(self.settings.initial_log_variance))
        )

    def forward(
        self, losses: dict[str, Tensor], shared: Tensor | None, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """sum_i exp(-s_i) L_i + s_i over the present tasks; absent s_i get no gradient."""
        log_variance = torch.stack([self.log_variance[self.task_index[t]] for t in losses]).float()
        loss = torch.stack([value.float() for value in losses.values()])
        surrogate = (torch.exp(-log_variance) * loss + log_variance).sum()
        weights = torch.exp(-log_variance).detach().tolist()
        return surrogate, dict(zip(losses, weights, strict=True))
