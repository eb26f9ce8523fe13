"""Cross-stitch networks (Misra, Shrivastava, Gupta & Hebert, "Cross-stitch Networks for
Multi-task Learning", CVPR 2016), the linear-combination core of sluice networks (Ruder,
Bingel, Augenstein & Søgaard, AAAI 2019).

Every task has a column (a copy of the top K layers). After each layer l the columns'
outputs are mixed by a learned matrix alpha_l (tasks x tasks):

    x_t^{l+1} = sum_s alpha_l[t, s] * column_s^l(x_s^l)      each (B, T, H)

alpha starts at ``stitch_self`` on the diagonal and (1 - stitch_self) / (n - 1) elsewhere
(the paper's (alpha_S, alpha_D) = (0.9, 0.1) for two tasks). All columns run every step
(every task's output depends on every column). Mixing is per layer, not per token: token-
and sentence-level tasks are treated alike. Each alpha entry is its own scalar parameter,
named by (target, source) task, so a task added later gets new entries and the trained
ones are carried (each a (1,) tensor).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ernie_cpt.model.sharing.base import Routed, Stack, check_levels

KIND = "cross_stitch"


def _key(target: str, source: str) -> str:
    return f"{target}__{source}"


class CrossStitch(nn.Module):
    """Task columns over the top layers with a cross-stitch unit after each layer."""

    def __init__(
        self, layers: Sequence[nn.Module], levels: Mapping[str, str], stitch_self: float
    ) -> None:
        super().__init__()
        self.levels = check_levels(levels)
        tasks = list(self.levels)
        off = (1.0 - stitch_self) / max(len(tasks) - 1, 1)
        self.columns = nn.ModuleDict({task: Stack(layers) for task in tasks})
        self.alpha = nn.ModuleList(
            nn.ParameterDict(
                {
                    _key(t, s): nn.Parameter(torch.tensor([stitch_self if t == s else off]))
                    for t in tasks
                    for s in tasks
                }
            )
            for _ in layers
        )

    def matrix(self, layer: int) -> Tensor:
        """alpha_layer as a (tasks, tasks) tensor, rows = target task."""
        tasks = list(self.levels)
        alpha = self.alpha[layer]
        # Entries are shape (1,): DeepSpeed's broadcast cannot view 0-dim parameters as bytes.
        return torch.stack([torch.cat([alpha[_key(t, s)] for s in tasks]) for t in tasks])

    def forward(
        self, hidden: Tensor, mask: Tensor | None, token_mask: Tensor, tasks: Sequence[str]
    ) -> Routed:
        """hidden (B, T, H) -> each requested task's stitched output (B, T, H)."""
        names = list(self.levels)
        states = [hidden] * len(names)
        for depth in range(len(self.alpha)):
            layer_out = torch.stack(
                [self.columns[t].layer[depth](x, mask) for t, x in zip(names, states, strict=True)]
            )  # (n_tasks, B, T, H)
            alpha = self.matrix(depth).to(layer_out.dtype)  # (n_tasks, n_tasks)
            mixed = torch.einsum("ij,jbsh->ibsh", alpha, layer_out)  # i, j: tasks
            states = list(mixed.unbind(0))
        outputs = {t: states[names.index(t)] for t in tasks}
        return Routed(outputs, {}, None)

    def telemetry(self) -> dict[str, Any]:
        """The mixing matrices: layer -> target task -> source task -> alpha."""
        names = list(self.levels)
        out: dict[str, Any] = {}
        with torch.no_grad():
            for depth in range(len(self.alpha)):
                m = self.matrix(depth)
                out[f"layer{depth}"] = {
                    t: {s: float(m[i, j]) for j, s in enumerate(names)} for i, t in enumerate(names)
                }
        return {"stitch": out}


def build(
    layers: Sequence[nn.Module], levels: Mapping[str, str], settings: Any, **_: Any
) -> CrossStitch:
    """The cross-stitch module over copies of ``layers``."""
    return CrossStitch(layers, levels, settings.stitch_self)
