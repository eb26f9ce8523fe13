"""Customized Gate Control (Tang, Liu, Zhao & Gong, "Progressive Layered Extraction (PLE):
A Novel Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys 2020,
section 4.2): shared experts plus experts owned by each task; task t's gate mixes only its
own experts and the shared ones, so tasks cannot overwrite each other's private experts.

    y_t = sum_e g_t(x)[e] * [experts_t ; shared](x)_e        (B, T, H)

Experts are copies of the top K encoder layers. Token-level tasks gate per token,
sentence-level tasks once per sequence on the [CLS] vector. ``CGCLevel`` is also PLE's
extraction network (``ple.py`` stacks it, adding a shared gate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from ernie_cpt.model.sharing.base import Routed, TaskGate, check_levels, make_experts, mix

KIND = "cgc"


class CGCLevel(nn.Module):
    """Shared experts, each task's own experts and one gate per task (and, for a PLE level
    below the top, a shared gate over every expert)."""

    def __init__(
        self,
        layers: Sequence[nn.Module],
        levels: Mapping[str, str],
        settings: Any,
        hidden_size: int,
        std: float,
        fresh: bool,
        seed: int,
        shared_gate: bool = False,
    ) -> None:
        super().__init__()
        self.levels = check_levels(levels)
        shared_n, own_n = settings.shared_experts, settings.task_experts
        self.shared = make_experts(layers, shared_n, fresh, std, seed)
        self.own = nn.ModuleDict(
            {
                t: make_experts(layers, own_n, fresh, std, seed + 1 + i)
                for i, t in enumerate(self.levels)
            }
        )
        self.gates = nn.ModuleDict(
            {t: TaskGate(hidden_size, own_n + shared_n, lv, std) for t, lv in self.levels.items()}
        )
        # PLE: the shared stream's gate over [shared ; every task's experts in task order]:
        # a task added later appends rows (gates have no bias), so trained rows are carried.
        n_all = own_n * len(self.levels) + shared_n
        self.shared_gate = TaskGate(hidden_size, n_all, "token", std) if shared_gate else None

    def forward_streams(
        self, streams: Mapping[str, Tensor], shared_in: Tensor, mask: Tensor | None
    ) -> tuple[dict[str, Tensor], Tensor | None, dict[str, Tensor]]:
        """Task streams (B, T, H) + shared stream -> new task streams, new shared stream
        (PLE only) and each task's gate (B, T, n)."""
        shared_out = [expert(shared_in, mask) for expert in self.shared]
        own_out = {t: [e(x, mask) for e in self.own[t]] for t, x in streams.items()}
        outputs, gates = {}, {}
        for task, x in streams.items():
            gates[task] = self.gates[task](x)  # (B, T, own_n + shared_n)
            outputs[task] = mix(own_out[task] + shared_out, gates[task])
        new_shared = None
        if self.shared_gate is not None:
            every = shared_out + [o for t in self.levels for o in own_out[t]]
            new_shared = mix(every, self.shared_gate(shared_in))
        return outputs, new_shared, gates


class CGC(nn.Module):
    """One CGC level over the top K layers."""

    def __init__(self, level: CGCLevel) -> None:
        super().__init__()
        self.levels = level.levels
        self.level = level

    def forward(
        self, hidden: Tensor, mask: Tensor | None, token_mask: Tensor, tasks: Sequence[str]
    ) -> Routed:
        """hidden (B, T, H) -> each requested task's output (B, T, H); only the requested
        tasks' own experts run."""
        outputs, _, gates = self.level.forward_streams(dict.fromkeys(tasks, hidden), hidden, mask)
        return Routed(outputs, {t: {"top": g} for t, g in gates.items()}, None)

    def telemetry(self) -> dict[str, Any]:
        """Gate statistics come from the forward pass."""
        return {}


def build(
    layers: Sequence[nn.Module],
    levels: Mapping[str, str],
    settings: Any,
    hidden_size: int,
    std: float,
    fresh: bool,
    seed: int,
) -> CGC:
    """A CGC module whose experts are copies of ``layers``."""
    return CGC(CGCLevel(layers, levels, settings, hidden_size, std, fresh, seed))
