"""Progressive Layered Extraction (Tang, Liu, Zhao & Gong, RecSys 2020, section 4.3):
CGC levels stacked so that routing is refined progressively. Here each of the top K
encoder layers is one extraction level, its experts copies of that layer.

At level l (all (B, T, H)): task t's stream x_t and the shared stream s enter;
    x_t <- sum_e g_t(x_t)[e] * [experts_t(x_t) ; shared(s)]_e
    s   <- sum_e g_s(s)[e] * [shared(s) ; experts_1(x_1) ; ... ; experts_n(x_n)]_e
(the shared gate g_s only below the top level). Token-level tasks gate per token,
sentence-level tasks on the [CLS] vector; the shared gate is per token. Below the top
level every task's stream runs (the shared gate reads all of them); at the top level only
the requested tasks'. With ``sharing.top_layers: 1`` PLE is CGC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from ernie_cpt.model.sharing.base import Routed, check_levels
from ernie_cpt.model.sharing.cgc import CGCLevel

KIND = "ple"


class PLE(nn.Module):
    """One CGC level per top layer, with shared gates between levels."""

    def __init__(
        self,
        layers: Sequence[nn.Module],
        levels: Mapping[str, str],
        settings: Any,
        hidden_size: int,
        std: float,
        fresh: bool,
        seed: int,
    ) -> None:
        super().__init__()
        self.levels = check_levels(levels)
        top = len(layers) - 1
        self.extraction = nn.ModuleList(
            CGCLevel([layer], levels, settings, hidden_size, std, fresh, seed + 1000 * i, i < top)
            for i, layer in enumerate(layers)
        )

    def forward(
        self, hidden: Tensor, mask: Tensor | None, token_mask: Tensor, tasks: Sequence[str]
    ) -> Routed:
        """hidden (B, T, H) -> each requested task's output (B, T, H)."""
        streams, shared = dict.fromkeys(self.levels, hidden), hidden
        gates: dict[str, dict[str, Tensor]] = {t: {} for t in tasks}
        for depth, level in enumerate(self.extraction):
            if depth == len(self.extraction) - 1:
                streams = {t: streams[t] for t in tasks}
            streams, shared, level_gates = level.forward_streams(streams, shared, mask)
            for task in tasks:
                gates[task][f"level{depth}"] = level_gates[task]
        return Routed(streams, gates, None)

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
) -> PLE:
    """A PLE module with one extraction level per layer of ``layers``."""
    return PLE(layers, levels, settings, hidden_size, std, fresh, seed)
