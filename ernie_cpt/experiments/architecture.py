"""What a comparison reports about each run's multi-task architecture (``sharing.kind``):
its cost (parameters, forward FLOPs per token), its gradient conflict and what its gates
learned, all read from a finished run directory.

- ``parameters``: every model parameter (encoder, architecture, heads; tied weights once).
- ``flops_per_token``: forward FLOPs of the encoder and architecture on one sequence of
  ``data.max_seq_length`` tokens routed for the run's first task, divided by the length,
  counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, attention);
  heads excluded (the same for every kind). Cross-stitch runs every column whatever the
  task; soft sharing one; MMoE every expert; CGC/PLE the shared experts and the task's own.
- ``gradient_conflict``: the mean over telemetry rows (``train.grad_telemetry_every``) of
  each task pair's gradient cosine on the last shared layer; the most conflicting pair is
  the one with the lowest mean.
- ``gates``: per task and gate site, the mean over the run's last ``tail`` logged rows of
  the mean gate distribution over experts (rows where the task was present).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


def architecture_cost(run_dir: Path) -> dict[str, Any]:
    """{"kind", "parameters", "flops_per_token"} of a run's newest checkpoint ({} if none)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ernie_cpt.config import config_from_dict
    from ernie_cpt.export import load_run_model
    from ernie_cpt.training.train_module import describe

    try:
        model, _, saved = load_run_model(Path(run_dir))
    except FileNotFoundError:  # no checkpoint (e.g. a run directory written by hand)
        return {}
    config = config_from_dict(saved["config"])
    length = min(config.data.max_seq_length, model.encoder.config.max_position_embeddings)
    ids = torch.full((1, length), 5, dtype=torch.long)
    ones, zeros = torch.ones_like(ids), torch.zeros_like(ids)
    model.train(False)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(ids, ones, zeros, zeros, [next(iter(config.tasks))])
    return {
        "kind": config.sharing.kind,
        "parameters": describe(model)["parameters"],
        "flops_per_token": counter.get_total_flops() / length,
    }


def gradient_conflict(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean pairwise gradient cosines over telemetry rows and the most conflicting pair."""
    sums: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        cosine = row.get("grad", {}).get("cosine", {})
        for a, others in cosine.items():
            for b, value in others.items():
                if a < b:
                    sums.setdefault((a, b), []).append(float(value))
    if not sums:
        return {"pairs": {}, "most_conflicting": None}
    means = {f"{a}|{b}": sum(v) / len(v) for (a, b), v in sums.items()}
    worst = min(means, key=means.__getitem__)
    return {
        "pairs": means,
        "most_conflicting": {"pair": worst.split("|"), "cosine": means[worst]},
        "rows": len(rows),
    }


def gate_summary(rows: Sequence[Mapping[str, Any]], tail: int = 50) -> dict[str, Any]:
    """Mean gate distribution per task and site over the last ``tail`` rows holding one,
    plus the last row's cross-stitch matrices and soft-sharing distances."""
    logged = [row["sharing"] for row in rows if row.get("sharing")]
    out: dict[str, Any] = {"gates": {}}
    collected: dict[str, dict[str, list[list[float]]]] = {}
    for sharing in logged[-tail:]:
        for task, sites in sharing.get("gates", {}).items():
            for site, stats in sites.items():
                collected.setdefault(task, {}).setdefault(site, []).append(stats["mean"])
    for task, sites in collected.items():
        out["gates"][task] = {
            site: [sum(col) / len(col) for col in zip(*vectors, strict=True)]
            for site, vectors in sites.items()
        }
    if logged:
        for key in ("stitch", "distance", "routes"):
            if key in logged[-1]:
                out[key] = logged[-1][key]
    return out


def run_architecture(run_dir: Path) -> dict[str, Any]:
    """Cost, gradient conflict and gate summary of a finished run."""
    from ernie_cpt.training.run_log import read_jsonl

    rows = read_jsonl(Path(run_dir) / "metrics.jsonl")
    return {
        **architecture_cost(run_dir),
        "gradient_conflict": gradient_conflict(rows),
        **gate_summary(rows),
    }
