"""Dynamic Task Prioritization: Guo, Haque, Huang, Yeung & Fei-Fei, "Dynamic Task
Prioritization for Multitask Learning", ECCV 2018, section 3 (task-level prioritization).

w_i = -(1 - kappa_i)^gamma log(kappa_i): a focal-loss weight that favours the tasks whose
KPI kappa_i in (0, 1) (higher is better, e.g. accuracy) is low. kappa_i is the moving
average kappa <- momentum * kappa + (1 - momentum) * kpi (the paper's alpha = 1 - momentum)
of ``observe(metrics[kpi_key(task)])``, i.e. the key "<task>/kpi"; pass KPIs averaged over
all ranks. The first value initialises the average; until then a task's weight is 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from ernie_cpt.training.weighting.base import WeightingModule, kpi_key, weighted_sum
from schedules import options

KPI_EPSILON = 1e-6  # kappa is clipped to [eps, 1 - eps] so log(kappa) stays finite


def focal_priority(kpi: float, gamma: float) -> float:
    """-(1 - kappa)^gamma log(kappa), kappa clipped into (0, 1)."""
    kappa = min(max(kpi, KPI_EPSILON), 1.0 - KPI_EPSILON)
    return -((1.0 - kappa) ** gamma) * math.log(kappa)


@dataclass(frozen=True)
class DTPSettings(options.Settings):
    """Options of ``dtp``: the focal exponent and the KPI moving-average momentum."""

    gamma: float = options.bounded(1.0, low=0.0)
    momentum: float = options.bounded(0.9, low=0.0, high=1.0, high_open=True)


class DynamicTaskPrioritization(WeightingModule):
    """Focal weights from each task's moving-average KPI."""

    Settings: ClassVar[type] = DTPSettings

    def __init__(self, tasks: Sequence[str], settings: DTPSettings | None = None) -> None:
        super().__init__(tasks)
        self.settings = settings or DTPSettings()
        self.gamma = float(self.settings.gamma)
        self.momentum = float(self.settings.momentum)
        self.kpi: dict[str, float] = {}  # task -> moving-average KPI

    def observe(self, metrics: Mapping[str, float], step: int) -> None:
        """Update the moving average of every task whose "<task>/kpi" is in ``metrics``."""
        for task in self.tasks:
            if kpi_key(task) in metrics:
                value = float(metrics[kpi_key(task)])
                old = self.kpi.get(task, value)
                self.kpi[task] = self.momentum * old + (1.0 - self.momentum) * value

    def forward(
        self, losses: dict[str, Tensor], shared: Tensor | None, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """sum_i w_i L_i with the focal weights (constants)."""
        weights = {
            task: focal_priority(self.kpi[task], self.gamma) if task in self.kpi else 1.0
            for task in losses
        }
        return weighted_sum(losses, weights), weights

    def get_extra_state(self) -> dict[str, Any]:
        """The moving-average KPIs."""
        return {"kpi": dict(self.kpi)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``get_extra_state`` saved."""
        self.kpi = {task: float(value) for task, value in state["kpi"].items()}
