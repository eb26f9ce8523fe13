"""PCGrad: Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task
Learning", NeurIPS 2020, Algorithm 1, applied to the shared representation.

g_i = dL_i/d shared. For each task i, for the other tasks j in a random order: if
g_i' . g_j < 0, g_i' -= (g_i' . g_j) / ||g_j||^2 g_j. The encoder then receives
sum_i g_i' through ``shared`` while each head keeps its own dL_i/d theta_head: the
surrogate is sum_i L_i + (shared * (sum_i g_i' - sum_i g_i).detach()).sum(), the second
term shifted to value 0. With several ranks each projects its own micro-batch's gradients.
The random orders come from a seeded generator whose state is checkpointed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ernie_cpt.training.weighting.base import (
    WeightingModule,
    redirect_shared_gradient,
    shared_gradients,
)
from schedules import options


@dataclass(frozen=True)
class PCGradSettings(options.Settings):
    """Options of ``pcgrad``: the seed of the random projection orders."""

    seed: int = 0


def project_conflicting(grads: Tensor, generator: torch.Generator) -> Tensor:
    """PCGrad's projection of each row of ``grads`` (n, d) off the rows it conflicts with."""
    squared_norms = (grads * grads).sum(dim=1).clamp_min(1e-20)  # (n,)
    projected = grads.clone()
    for i in range(len(grads)):
        for j in torch.randperm(len(grads), generator=generator).tolist():
            if j != i:  # no host sync: the "if conflicting" test is the clamp
                dot = torch.dot(projected[i], grads[j]).clamp(max=0.0)
                projected[i] -= dot / squared_norms[j] * grads[j]
    return projected


class PCGrad(WeightingModule):
    """Projecting conflicting gradients at the shared encoder output."""

    Settings: ClassVar[type] = PCGradSettings

    def __init__(self, tasks: Sequence[str], settings: PCGradSettings | None = None) -> None:
        super().__init__(tasks)
        self.settings = settings or PCGradSettings()
        self.generator = torch.Generator().manual_seed(int(self.settings.seed))

    def forward(
        self, losses: dict[str, Tensor], shared: Tensor | None, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """sum_i L_i, plus the term that swaps the encoder's gradient for the projected one."""
        total = torch.stack([loss.float() for loss in losses.values()]).sum()
        if len(losses) == 1:  # nothing to conflict with: the plain loss
            return total, dict.fromkeys(losses, 1.0)
        grads = shared_gradients(list(losses.values()), shared)  # (n, B*T*H)
        projected = project_conflicting(grads, self.generator)
        surrogate = total + redirect_shared_gradient(shared, grads.sum(0), projected.sum(0))
        return surrogate, dict.fromkeys(losses, 1.0)

    def get_extra_state(self) -> dict[str, Any]:
        """The generator state, so a resumed run draws the same orders."""
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``get_extra_state`` saved."""
        self.generator.set_state(state["generator"])
