"""Task-level Mixture-of-Experts inside the transformer's feed-forward sublayers
(Kudugunta, Huang, Bapna, Krikun, Lepikhin, Luong & Firat, "Beyond Distillation:
Task-level Mixture-of-Experts for Efficient Inference", Findings of EMNLP 2021).

In each of the top K layers the self-attention stays shared (the layer itself) and the
feed-forward block (transformers' ``ErnieIntermediate`` + ``ErnieOutput``, copied) is
replaced by E experts. The route depends on the task only, not on the token: task t has
learned logits r_t^l (E,) per layer, keeps the ``top_k`` largest and renormalises

    a = attention^l(x)                                         (B, T, H)
    x <- sum_{e in topk(r_t^l)} softmax(r_t^l restricted to topk)[e] * FFN_e^l(a)

so token- and sentence-level tasks route the same way, every token of a task takes the
same experts, and a task's sub-network can be extracted for inference. A task added in a
later stage gets its own logits, i.e. its own route through the experts.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ernie_cpt.model.sharing.base import Routed, check_levels, reinit_

KIND = "task_moe"


class ExpertFFN(nn.Module):
    """A copy of an encoder layer's feed-forward block: (B, T, H) -> (B, T, H)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.intermediate = copy.deepcopy(layer.intermediate)
        self.output = copy.deepcopy(layer.output)

    def forward(self, attention_output: Tensor) -> Tensor:
        """transformers' ``feed_forward_chunk``: dense-act-dense, residual, LayerNorm."""
        return self.output(self.intermediate(attention_output), attention_output)


class TaskMoE(nn.Module):
    """Shared attention, E feed-forward experts and per-task routes in each top layer."""

    def __init__(
        self,
        layers: Sequence[nn.Module],
        levels: Mapping[str, str],
        settings: Any,
        std: float,
        fresh: bool,
        seed: int,
    ) -> None:
        super().__init__()
        self.levels = check_levels(levels)
        self.top_k = settings.top_k
        # The layers' attention (and their unused FFN) stay as the shared part.
        self.attention = nn.ModuleList(copy.deepcopy(layer.attention) for layer in layers)
        generator = torch.Generator().manual_seed(seed)
        self.experts = nn.ModuleList()
        for layer in layers:
            ffns = nn.ModuleList(ExpertFFN(layer) for _ in range(settings.experts))
            if fresh:
                reinit_(ffns, std, generator)
            self.experts.append(ffns)
        # task -> (K, E) route logits; small random so top-k differs between tasks at start.
        self.routes = nn.ParameterDict(
            {
                t: nn.Parameter(torch.randn(len(layers), settings.experts, generator=generator))
                for t in self.levels
            }
        )

    def route(self, task: str, depth: int) -> tuple[Tensor, Tensor]:
        """(expert indices (k,), weights (k,)) of ``task`` at top layer ``depth``."""
        logits = self.routes[task][depth]  # (E,)
        top = torch.topk(logits, self.top_k)
        return top.indices, torch.softmax(top.values.float(), -1)

    def forward(
        self, hidden: Tensor, mask: Tensor | None, token_mask: Tensor, tasks: Sequence[str]
    ) -> Routed:
        """hidden (B, T, H) -> each requested task's output (B, T, H)."""
        outputs, gates = {}, {}
        for task in tasks:
            x, gates[task] = hidden, {}
            for depth, attention in enumerate(self.attention):
                a, _ = attention(x, mask)  # (B, T, H)
                indices, weights = self.route(task, depth)
                x = sum(
                    w.to(a.dtype) * self.experts[depth][int(e)](a)
                    for e, w in zip(indices, weights, strict=True)
                )
                used = torch.zeros(len(self.experts[depth])).index_put((indices,), weights)  # (E,)
                gates[task][f"layer{depth}"] = used.expand(*hidden.shape[:2], -1)
            outputs[task] = x
        return Routed(outputs, gates, None)

    def telemetry(self) -> dict[str, Any]:
        """Each task's chosen experts per top layer."""
        with torch.no_grad():
            chosen = {
                t: {
                    f"layer{d}": sorted(int(i) for i in self.route(t, d)[0])
                    for d in range(len(self.attention))
                }
                for t in self.levels
            }
        return {"routes": chosen}


def build(
    layers: Sequence[nn.Module],
    levels: Mapping[str, str],
    settings: Any,
    std: float,
    fresh: bool,
    seed: int,
    **_: Any,
) -> TaskMoE:
    """A Task-MoE module over ``layers``."""
    return TaskMoE(layers, levels, settings, std, fresh, seed)
