"""FAMO, Fast Adaptive Multitask Optimization: Liu, Liu, Jin, Stone & Liu, NeurIPS 2023
(arXiv 2306.03792), following the authors' reference implementation (Cranial-XIX/FAMO).

Task logits xi (n,), z = softmax(xi); with D_i = L_i - m_i + eps (m_i a known lower bound
of L_i, 0 by default) the step minimises

    sum_i z_i log D_i / c,   c = (sum_i z_i / D_i)   (c a constant: no gradient)

i.e. L_i is weighted by z_i / (c D_i) (these weights sum to 1), which decreases every
task's log-loss at the same rate. After the step xi moves towards tasks whose log-loss fell
least: delta_i = log D_i(t) - log D_i(t+1), gradient J_softmax(xi)^T delta, applied with
Adam (lr ``lr``, L2 decay ``gamma``, torch's Adam formulas), O(1) in the model size and
from loss values only, so it runs at any ZeRO stage.

Deviation from the paper, to keep one forward per step: D_i(t+1) is task i's loss at the
next step it appears in (on that step's batch), not a second forward on the same batch.
With a subset of tasks present, softmax and update run over the present tasks (and those
present in both observations). xi and Adam's moments are plain state saved with the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ernie_cpt.training.weighting.base import WeightingModule, loss_key
from schedules import options


@dataclass(frozen=True)
class FAMOSettings(options.Settings):
    """Options of ``famo``: logits' Adam lr and L2 decay, the loss floor, the log epsilon."""

    lr: float = options.bounded(0.025, low=0.0, low_open=True)
    gamma: float = options.bounded(0.001, low=0.0)
    min_loss: float = 0.0
    eps: float = options.bounded(1e-8, low=0.0, low_open=True)


def famo_weights(z: Sequence[float], d: Sequence[float]) -> list[float]:
    """Effective loss weights z_i / (c D_i), c = sum_j z_j / D_j."""
    c = sum(zi / di for zi, di in zip(z, d, strict=True))
    return [zi / (c * di) for zi, di in zip(z, d, strict=True)]


def softmax_vjp(logits: Sequence[float], delta: Sequence[float]) -> list[float]:
    """J_softmax(logits)^T delta = z * (delta - z . delta)."""
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    z = [e / sum(exps) for e in exps]
    dot = sum(zi * di for zi, di in zip(z, delta, strict=True))
    return [zi * (di - dot) for zi, di in zip(z, delta, strict=True)]


class FAMO(WeightingModule):
    """Loss weights from softmax task logits that FAMO's own Adam updates after each step."""

    Settings: ClassVar[type] = FAMOSettings
    BETAS = (0.9, 0.999)
    ADAM_EPS = 1e-8

    def __init__(self, tasks: Sequence[str], settings: FAMOSettings | None = None) -> None:
        super().__init__(tasks)
        self.settings = settings or FAMOSettings()
        n = len(self.tasks)
        self.logits, self.exp_avg, self.exp_avg_sq = [0.0] * n, [0.0] * n, [0.0] * n
        self.adam_step = 0
        self.previous: dict[str, float] = {}  # task -> its last observed loss

    def log_d(self, loss: float) -> float:
        """log D = log(L - m + eps) (clamped at eps: a loss below the floor)."""
        return math.log(max(loss - self.settings.min_loss, 0.0) + self.settings.eps)

    def forward(
        self, losses: dict[str, Tensor], shared: Tensor | None, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """sum_i z_i log D_i / c over the present tasks."""
        index = [self.task_index[t] for t in losses]
        z = torch.softmax(torch.tensor([self.logits[i] for i in index], dtype=torch.float64), 0)
        values = torch.stack([value.float() for value in losses.values()])
        d = (values - self.settings.min_loss).clamp(min=0.0) + self.settings.eps
        c = (z.to(d.dtype) / d).sum().detach()
        surrogate = (z.to(d.dtype) * d.log() / c).sum()
        exact = (values.detach().double() - self.settings.min_loss).clamp(min=0.0)
        weights = famo_weights(z.tolist(), (exact + self.settings.eps).tolist())
        return surrogate, dict(zip(losses, weights, strict=True))

    def observe(self, metrics: Mapping[str, float], step: int) -> None:
        """Update the logits with the change of each task's log-loss since its last step."""
        current = {t: float(metrics[loss_key(t)]) for t in self.tasks if loss_key(t) in metrics}
        both = [t for t in self.tasks if t in current and t in self.previous]
        if both:
            delta = [self.log_d(self.previous[t]) - self.log_d(current[t]) for t in both]
            grad = softmax_vjp([self.logits[self.task_index[t]] for t in both], delta)
            self.adam_update({self.task_index[t]: g for t, g in zip(both, grad, strict=True)})
        self.previous.update(current)

    def adam_update(self, grads: Mapping[int, float]) -> None:
        """One step of torch's Adam (L2 ``gamma``) on the logits that have a gradient."""
        beta1, beta2 = self.BETAS
        self.adam_step += 1
        correction1 = 1 - beta1**self.adam_step
        correction2 = 1 - beta2**self.adam_step
        for i, g in grads.items():
            g = g + self.settings.gamma * self.logits[i]
            self.exp_avg[i] = beta1 * self.exp_avg[i] + (1 - beta1) * g
            self.exp_avg_sq[i] = beta2 * self.exp_avg_sq[i] + (1 - beta2) * g * g
            denom = math.sqrt(self.exp_avg_sq[i]) / math.sqrt(correction2) + self.ADAM_EPS
            self.logits[i] -= self.settings.lr / correction1 * self.exp_avg[i] / denom

    def get_extra_state(self) -> dict[str, Any]:
        """Logits, Adam state and last losses (plain Python, saved with the model)."""
        return {
            "logits": list(self.logits),
            "exp_avg": list(self.exp_avg),
            "exp_avg_sq": list(self.exp_avg_sq),
            "adam_step": self.adam_step,
            "previous": dict(self.previous),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``get_extra_state`` saved."""
        self.logits = [float(v) for v in state["logits"]]
        self.exp_avg = [float(v) for v in state["exp_avg"]]
        self.exp_avg_sq = [float(v) for v in state["exp_avg_sq"]]
        self.adam_step = int(state["adam_step"])
        self.previous = {t: float(v) for t, v in state["previous"].items()}
