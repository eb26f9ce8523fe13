"""Random Loss Weighting: Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random
Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022.

Each step draws z ~ N(0, I) and weights the losses by lambda = softmax(z):
L = sum_i lambda_i L_i (the weights sum to 1, as in the paper and LibMTL's RLW).

z is a pure function of (seed, step): one draw of n normals (n = the run's task count, in
its task order) from a torch generator seeded with ``stable_seed("rlw", seed, step)``; the
softmax runs over the tasks present in the step. So every rank and every micro-batch of a
step uses the same weights and a resumed run draws the same ones, with no state to save.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ernie_cpt.training.weighting.base import WeightingModule, weighted_sum
from pretrain_tasks.base import stable_seed
from schedules import options


@dataclass(frozen=True)
class RLWSettings(options.Settings):
    """Options of ``rlw``: the seed of the per-step normal draws."""

    seed: int = 0


def rlw_draw(n: int, seed: int, step: int) -> Tensor:
    """The step's z (n,) ~ N(0, I), float64."""
    generator = torch.Generator().manual_seed(stable_seed("rlw", seed, step) % (2**63))
    return torch.randn(n, generator=generator, dtype=torch.float64)


class RandomLossWeighting(WeightingModule):
    """lambda = softmax(z), z ~ N(0, I) drawn afresh each step; no learnable state."""

    Settings: ClassVar[type] = RLWSettings

    def __init__(self, tasks: Sequence[str], settings: RLWSettings | None = None) -> None:
        super().__init__(tasks)
        self.settings = settings or RLWSettings()

    def forward(
        self, losses: dict[str, Tensor], shared: Tensor | None, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """sum_i lambda_i L_i over the present tasks (lambda constants)."""
        z = rlw_draw(len(self.tasks), self.settings.seed, step)
        present = torch.stack([z[self.task_index[t]] for t in losses])
        weights = dict(zip(losses, torch.softmax(present, 0).tolist(), strict=True))
        return weighted_sum(losses, weights), weights
