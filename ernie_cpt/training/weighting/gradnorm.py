"""GradNorm: Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for
Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018.

G_i = ||d(w_i L_i)/d shared|| = w_i ||dL_i/d shared||, measured on the shared encoder output
(the paper uses the last shared layer's weights; the activation costs one backward pass
through each head and never touches parameters, which ZeRO partitions).
target_i = mean_j(G_j) * r_i^alpha, r_i = (L_i / L_i(0)) / mean_j(L_j / L_j(0)),
L_grad = sum_i |G_i - target_i| with the target a constant. L_grad reaches only the weights;
the task term sum_i w_i L_i uses the weights as constants. L_i(0) is the first loss of task
i that ``combine`` sees (in continual training: when the task is introduced).

Renormalisation (the paper rescales w to sum to K after each step) is a parametrisation
here: w = K softmax(logits) over the present tasks, so no parameter is mutated after the
optimizer step (impossible for a partitioned parameter under ZeRO-3 outside a gather).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ernie_cpt.training.weighting.base import WeightingModule, shared_gradients
from schedules import options


@dataclass(frozen=True)
class GradNormSettings(options.Settings):
    """Options of ``gradnorm``: alpha, the strength of the pull towards equal training rates."""

    alpha: float = 1.5


class GradNorm(WeightingModule):
    """Learnable task weights that equalise the tasks' gradient norms at ``shared``."""

    Settings: ClassVar[type] = GradNormSettings

    def __init__(self, tasks: Sequence[str], settings: GradNormSettings | None = None) -> None:
        super().__init__(tasks)
        self.settings = settings or GradNormSettings()
        self.alpha = float(self.settings.alpha)
        self.weight_logits = nn.Parameter(torch.zeros(len(self.tasks)))
        self.initial_losses: dict[str, float] = {}

    def forward(
        self, losses: dict[str, Tensor], shared: Tensor | None, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """sum_i w_i.detach() L_i + L_grad (whose gradient reaches only the weights)."""
        for task, loss in losses.items():
            if task not in self.initial_losses:
                self.initial_losses[task] = max(float(loss.detach()), 1e-12)
        if len(losses) == 1:  # w = 1 and L_grad = 0: skip the extra backward pass
            return next(iter(losses.values())), dict.fromkeys(losses, 1.0)
        logits = torch.stack([self.weight_logits[self.task_index[t]] for t in losses]).float()
        weights = len(losses) * torch.softmax(logits, dim=0)  # (n,), sums to n
        loss = torch.stack([value.float() for value in losses.values()])  # (n,)
        grad_norms = shared_gradients(list(losses.values()), shared).norm(dim=1)  # (n,)
        weighted_norms = weights * grad_norms  # G_i; depends on the logits only
        initial = loss.new_tensor([self.initial_losses[task] for task in losses])
        ratio = loss.detach() / initial
        target = (weighted_norms.mean() * (ratio / ratio.mean()) ** self.alpha).detach()
        balance = (weighted_norms - target).abs().sum()
        surrogate = (weights.detach() * loss).sum() + balance
        return surrogate, dict(zip(losses, weights.detach().tolist(), strict=True))

    def get_extra_state(self) -> dict[str, Any]:
        """The initial losses L_i(0)."""
        return {"initial_losses": dict(self.initial_losses)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``get_extra_state`` saved."""
        self.initial_losses = {t: float(v) for t, v in state["initial_losses"].items()}
