"""What every sharing architecture builds on: the contract, layer stacks taken from the
shared encoder, task gates, and gate statistics.

An architecture receives the output of the shared lower layers, ``hidden`` (B, T, H), and
returns one (B, T, H) sequence per requested task. Its experts and columns are copies
(``copy.deepcopy``) of the encoder's own top ``ErnieLayer`` modules from transformers: no
model code is re-written here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

LEVELS = ("token", "sentence")


class Routed(NamedTuple):
    """An architecture's output for one forward pass."""

    outputs: dict[str, Tensor]  # task -> (B, T, H) top-of-network sequence of that task
    gates: dict[str, dict[str, Tensor]]  # task -> gate site -> (B, T, E) probabilities
    penalty: Tensor | None  # a regulariser to add to the loss (soft sharing), or None


class Stack(nn.Module):
    """A copy of consecutive encoder layers run in order: (B, T, H) -> (B, T, H)."""

    def __init__(self, layers: Iterable[nn.Module]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(copy.deepcopy(list(layers)))

    def forward(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        """``mask`` is the encoder's 4-D attention mask (or None: attend everywhere)."""
        for layer in self.layer:
            hidden = layer(hidden, mask)
        return hidden


def reinit_(module: nn.Module, std: float, generator: torch.Generator | None = None) -> None:
    """BERT's initialisation (normal(0, std) weights, zero biases, unit LayerNorm) in place,
    so experts copied from one layer start different; ``generator`` keeps it seeded."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            with torch.no_grad():
                sub.weight.copy_(torch.randn(sub.weight.shape, generator=generator) * std)
                if sub.bias is not None:
                    sub.bias.zero_()
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


def make_experts(
    layers: Sequence[nn.Module], count: int, fresh: bool, std: float, seed: int
) -> nn.ModuleList:
    """``count`` stacks copied from ``layers``; with ``fresh`` each gets its own random init
    (a freshly initialised encoder), else all keep the copied (pre-trained) weights."""
    generator = torch.Generator().manual_seed(seed)
    experts = nn.ModuleList(Stack(layers) for _ in range(count))
    if fresh:
        for expert in experts:
            reinit_(expert, std, generator)
    return experts


class TaskGate(nn.Module):
    """Softmax gate of one task over ``n`` experts (MMoE/CGC/PLE).

    Token-level tasks gate per token (each position mixes the experts its own way);
    sentence-level tasks gate once per sequence, on the [CLS] vector, the representation
    their heads pool. No bias, so a gate over more experts (a grown PLE shared gate) keeps
    its trained rows.
    """

    def __init__(self, hidden_size: int, n: int, level: str, std: float) -> None:
        super().__init__()
        if level not in LEVELS:
            raise ValueError(f"task level must be one of {LEVELS}, got {level!r}")
        self.level = level
        self.linear = nn.Linear(hidden_size, n, bias=False)
        nn.init.normal_(self.linear.weight, 0.0, std)

    def forward(self, hidden: Tensor) -> Tensor:
        """(B, T, H) -> gate probabilities (B, T, n); sentence level: equal over T."""
        if self.level == "sentence":
            logits = self.linear(hidden[:, :1])  # (B, 1, n) from [CLS]
            return (
                torch.softmax(logits.float(), -1).to(hidden.dtype).expand(-1, hidden.shape[1], -1)
            )
        return torch.softmax(self.linear(hidden).float(), -1).to(hidden.dtype)


def mix(expert_outputs: Sequence[Tensor], gate: Tensor) -> Tensor:
    """sum_e gate[..., e] * expert_e: n tensors (B, T, H) and gate (B, T, n) -> (B, T, H)."""
    stacked = torch.stack(list(expert_outputs), dim=-1)  # (B, T, H, n)
    return (stacked * gate.unsqueeze(2)).sum(-1)


def gate_statistics(probs: Tensor, token_mask: Tensor) -> dict[str, Any]:
    """Mean gate distribution over real tokens and the mean per-token entropy (nats).

    probs (B, T, n), token_mask (B, T) of 0/1. For sentence-level gates every token of a
    sequence holds the same distribution, so this is the mean over sequences weighted by
    length.
    """
    weights = token_mask.to(torch.float32).unsqueeze(-1)  # (B, T, 1)
    p = probs.detach().float()
    count = weights.sum().clamp(min=1.0)
    mean = (p * weights).sum((0, 1)) / count  # (n,)
    entropy = -(p * torch.log(p.clamp(min=1e-12))).sum(-1, keepdim=True)  # (B, T, 1)
    return {
        "mean": [float(v) for v in mean],
        "entropy": float((entropy * weights).sum() / count),
        "max_entropy": math.log(p.shape[-1]),
    }


def check_levels(levels: Mapping[str, str]) -> dict[str, str]:
    """A task -> level map with known levels, in the run's task order."""
    if not levels:
        raise ValueError("sharing needs at least one task")
    bad = {task: level for task, level in levels.items() if level not in LEVELS}
    if bad:
        raise ValueError(f"task levels must be one of {LEVELS}, got {bad}")
    return dict(levels)


class SharedEncoding(NamedTuple):
    """What ``MultiTaskModel.forward`` returns.

    ``sequence_output``/``pooled_output`` are the shared encoder's: the whole model's for
    ``hard`` (so this reads like ``Encoded``), the last shared layer's otherwise (the
    activation gradient-based loss weightings differentiate against). ``routes`` holds each
    requested task's own top-of-network ``Encoded``; ``extra_loss`` is what the
    architecture adds to the loss (soft sharing's penalty, plus a zero-weighted touch of
    every architecture parameter so ZeRO sees the same gradients every step).
    """

    sequence_output: Tensor  # (B, T, H)
    pooled_output: Tensor  # (B, H)
    routes: dict[str, Any]  # task -> Encoded((B, T, H), (B, H)); empty for hard
    extra_loss: Tensor | None  # scalar or None (hard)

    def for_task(self, task: str) -> Any:
        """The ``Encoded`` task ``task``'s head reads."""
        from pretrain_tasks.base import Encoded

        if task in self.routes:
            return self.routes[task]
        return Encoded(self.sequence_output, self.pooled_output)
