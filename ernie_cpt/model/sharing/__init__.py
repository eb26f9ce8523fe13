"""Multi-task sharing architectures over the top layers of the shared encoder.

``sharing.kind`` selects one module (one file each, citing its paper): ``hard`` (the
default: nothing task-specific below the heads), ``soft``, ``cross_stitch``, ``mmoe``,
``cgc``, ``ple``, ``task_moe``. For every kind but ``hard`` the top ``sharing.top_layers``
layers of transformers' ``ErnieModel`` are taken out of it: the encoder keeps the lower
layers (and still loads with ``AutoModel``), the architecture owns copies of the top ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

from torch import nn

from ernie_cpt.model.sharing import cgc, cross_stitch, hard, mmoe, ple, soft, task_moe
from ernie_cpt.model.sharing.base import Routed, gate_statistics

KINDS: dict[str, ModuleType] = {
    module.KIND: module for module in (hard, soft, cross_stitch, mmoe, cgc, ple, task_moe)
}

__all__ = [
    "KINDS",
    "Routed",
    "build_sharing",
    "gate_statistics",
    "split_encoder",
    "warm_start_sources",
]

# A new task's column (soft, cross-stitch) starts as the mean of the existing tasks' columns;
# its own experts (CGC, PLE) as the mean of the shared experts of the same level.
_COLUMN = re.compile(r"^(?P<pre>(?:.*\.)?sharing\.)columns\.(?P<task>[^.]+)\.(?P<rest>.+)$")
_OWN = re.compile(r"^(?P<pre>(?:.*\.)?sharing\.(?:.*\.)?)own\.(?P<task>[^.]+)\.\d+\.(?P<rest>.+)$")


def split_encoder(encoder: nn.Module, top_layers: int) -> list[nn.Module]:
    """Take the top ``top_layers`` layers out of an ``ErnieModel`` (its config follows) and
    return them; at least one layer must stay shared."""
    layers = encoder.encoder.layer
    if not 1 <= top_layers < len(layers):
        raise ValueError(
            f"sharing.top_layers must be in [1, {len(layers) - 1}] for an encoder of "
            f"{len(layers)} layers (at least one layer stays shared), got {top_layers}"
        )
    keep = len(layers) - top_layers
    top = list(layers[keep:])
    encoder.encoder.layer = nn.ModuleList(layers[:keep])
    encoder.config.num_hidden_layers = keep
    return top


def build_sharing(
    settings: Any, encoder: nn.Module, levels: Mapping[str, str], fresh: bool
) -> nn.Module | None:
    """The architecture ``settings.kind`` for tasks ``levels`` (task -> "token"/"sentence"),
    its layers taken from ``encoder``'s top; None for ``hard`` (the encoder is untouched).

    ``fresh``: the encoder is newly initialised, so experts get their own random weights
    (seeded by ``settings.seed``); otherwise they all start as copies of the loaded layers.
    """
    if settings.kind not in KINDS:
        raise ValueError(f"unknown sharing.kind {settings.kind!r}; known: {sorted(KINDS)}")
    if settings.kind == hard.KIND:
        return None
    top = split_encoder(encoder, settings.top_layers)
    config = encoder.config
    return KINDS[settings.kind].build(
        top,
        levels,
        settings,
        hidden_size=config.hidden_size,
        std=config.initializer_range,
        fresh=fresh,
        seed=settings.seed,
    )


def warm_start_sources(name: str, carried: Iterable[str]) -> list[str]:
    """For a parameter ``name`` of a task added to a resumed run, the carried parameters
    whose mean it starts from (empty: keep its fresh initialisation, e.g. a new gate)."""
    carried = list(carried)
    column = _COLUMN.match(name)
    if column:
        pre, rest = column["pre"], column["rest"]
        pattern = re.compile(rf"^{re.escape(pre)}columns\.[^.]+\.{re.escape(rest)}$")
        return [c for c in carried if pattern.match(c)]
    own = _OWN.match(name)
    if own:
        pre, rest = own["pre"], own["rest"]
        pattern = re.compile(rf"^{re.escape(pre)}shared\.\d+\.{re.escape(rest)}$")
        return [c for c in carried if pattern.match(c)]
    return []
