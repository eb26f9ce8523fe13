"""Multi-gate Mixture-of-Experts (Ma, Zhao, Yi, Chen, Hong & Chi, "Modeling Task
Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018).

A pool of E experts, each a copy of the top K encoder layers, shared by all tasks; one
softmax gate per task over the experts:

    y_t = sum_e g_t(x)[e] * expert_e(x)        x, expert_e(x), y_t: (B, T, H)

Token-level tasks gate per token (g_t(x): (B, T, E)); sentence-level tasks gate once per
sequence on the [CLS] vector (broadcast over T). Every expert runs every step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from ernie_cpt.model.sharing.base import Routed, TaskGate, check_levels, make_experts, mix

KIND = "mmoe"


class MMoE(nn.Module):
    """E shared experts over the top layers and one gate per task."""

    def __init__(
        self,
        layers: Sequence[nn.Module],
        levels: Mapping[str, str],
        experts: int,
        hidden_size: int,
        std: float,
        fresh: bool,
        seed: int,
    ) -> None:
        super().__init__()
        self.levels = check_levels(levels)
        self.experts = make_experts(layers, experts, fresh, std, seed)
        self.gates = nn.ModuleDict(
            {t: TaskGate(hidden_size, experts, level, std) for t, level in self.levels.items()}
        )

    def forward(
        self, hidden: Tensor, mask: Tensor | None, token_mask: Tensor, tasks: Sequence[str]
    ) -> Routed:
        """hidden (B, T, H) -> each requested task's gated mixture (B, T, H)."""
        expert_out = [expert(hidden, mask) for expert in self.experts]  # E x (B, T, H)
        outputs, gates = {}, {}
        for task in tasks:
            gate = self.gates[task](hidden)  # (B, T, E)
            outputs[task] = mix(expert_out, gate)
            gates[task] = {"top": gate}
        return Routed(outputs, gates, None)

    def telemetry(self) -> dict[str, Any]:
        """Gate statistics come from the forward pass; nothing parameter-level."""
        return {}


def build(
    layers: Sequence[nn.Module],
    levels: Mapping[str, str],
    settings: Any,
    hidden_size: int,
    std: float,
    fresh: bool,
    seed: int,
) -> MMoE:
    """The MMoE module over ``settings.experts`` copies of ``layers``."""
    return MMoE(layers, levels, settings.experts, hidden_size, std, fresh, seed)
