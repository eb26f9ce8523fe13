"""Dynamic Weight Average: Liu, Johns & Davison, "End-to-End Multi-Task Learning with
Attention" (MTAN), CVPR 2019, eq. (7).

w_i = K exp(r_i / temperature) / sum_j exp(r_j / temperature), r_i = L_i(t-1) / L_i(t-2),
where L_i(t) is task i's average loss over window t. The paper's window is an epoch; here it
is ``window`` optimizer steps, fed by ``observe(metrics[loss_key(task)])``; pass losses
averaged over all ranks so every rank computes the same weights.

With a subset of tasks present, K and the softmax run over the present tasks that have two
complete windows of history (their weights average 1); every other present task gets 1.
A window a task is absent from does not count as history for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from ernie_cpt.training.weighting.base import WeightingModule, loss_key, weighted_sum
from schedules import options


def dwa_weights(ratios: Sequence[float], temperature: float) -> list[float]:
    """K softmax(r / temperature): the weights for loss-descent rates r (K = len(r))."""
    scaled = [r / temperature for r in ratios]
    top = max(scaled)
    exps = [math.exp(s - top) for s in scaled]
    return [len(ratios) * e / sum(exps) for e in exps]


@dataclass(frozen=True)
class DWASettings(options.Settings):
    """Options of ``dwa``: the softmax temperature and the window length in steps."""

    temperature: float = options.bounded(2.0, low=0.0, low_open=True)
    window: int = options.bounded(100, low=1)


class DynamicWeightAverage(WeightingModule):
    """Weights from the ratio of the last two window-average losses of each task."""

    Settings: ClassVar[type] = DWASettings

    def __init__(self, tasks: Sequence[str], settings: DWASettings | None = None) -> None:
        super().__init__(tasks)
        self.settings = settings or DWASettings()
        self.temperature = float(self.settings.temperature)
        self.window = int(self.settings.window)
        self.current_window = 0
        self.sums: dict[str, list[float]] = {}  # task -> [loss sum, count] of the open window
        self.history: dict[str, list[float]] = {}  # task -> last two closed window averages

    def observe(self, metrics: Mapping[str, float], step: int) -> None:
        """Accumulate this step's losses; a step in a new window closes the open one."""
        if step // self.window != self.current_window:
            for task, (total, count) in self.sums.items():
                self.history[task] = (self.history.get(task, []) + [total / count])[-2:]
            self.sums, self.current_window = {}, step // self.window
        for task in self.tasks:
            if loss_key(task) in metrics:
                total, count = self.sums.get(task, [0.0, 0])
                self.sums[task] = [total + float(metrics[loss_key(task)]), count + 1]

    def forward(
        self, losses: dict[str, Tensor], shared: Tensor | None, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """sum_i w_i L_i with the DWA weights of the present tasks (constants)."""
        weights = {task: 1.0 for task in losses}
        ready = [task for task in losses if len(self.history.get(task, [])) == 2]
        if ready:
            ratios = [self.history[t][1] / max(self.history[t][0], 1e-12) for t in ready]
            weights.update(zip(ready, dwa_weights(ratios, self.temperature), strict=True))
        return weighted_sum(losses, weights), weights

    def get_extra_state(self) -> dict[str, Any]:
        """The loss history (plain Python, saved in the checkpoint with the model)."""
        return {"current_window": self.current_window, "sums": self.sums, "history": self.history}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``get_extra_state`` saved."""
        self.current_window = int(state["current_window"])
        self.sums = {task: list(value) for task, value in state["sums"].items()}
        self.history = {task: list(value) for task, value in state["history"].items()}
