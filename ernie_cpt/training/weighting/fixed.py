"""Fixed weights: L = sum_i w_i L_i with constant, configured w_i.

With every w_i = 1 this is LibMTL's EW ("equal weighting") and what ERNIE 2.0 (Sun et al.,
AAAI 2020, section 3) does when it trains several tasks together: the baseline every
adaptive method is compared against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ernie_cpt.training.weighting.base import WeightingModule, weighted_sum
from schedules import options


@dataclass(frozen=True)
class FixedSettings(options.Settings):
    """Options of ``fixed``: task -> weight; tasks not listed get 1.0."""

    weights: Mapping[str, float] | None = None


class FixedWeighting(WeightingModule):
    """Constant per-task weights; tasks not listed in ``weights`` get 1.0."""

    Settings: ClassVar[type] = FixedSettings

    def __init__(self, tasks: Sequence[str], settings: FixedSettings | None = None) -> None:
        super().__init__(tasks)
        self.settings = settings or FixedSettings()
        weights = dict(self.settings.weights or {})
        unknown = sorted(set(weights) - set(self.tasks))
        if unknown:
            raise ValueError(f"fixed weights name unknown tasks {unknown}; tasks: {self.tasks}")
        self.weights = {task: float(weights.get(task, 1.0)) for task in self.tasks}

    def forward(
        self, losses: dict[str, Tensor], shared: Tensor | None, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """sum_i w_i L_i over the present tasks."""
        used = {task: self.weights[task] for task in losses}
        return weighted_sum(losses, used), used
