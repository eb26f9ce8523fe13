"""One optimizer step: gradient-accumulated micro-batches of one task, reduced over ranks.

A sentence-level task's batch also carries the labels of the stage's token-level tasks (one
forward, several losses, as in the ERNIE 2.0 paper). Everything random about a step is a
pure function of (seed, step, micro-batch, rank).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ernie_cpt.training.engine import all_reduce_sum, device
from ernie_cpt.training.train_module import merge_stats, reduce_stats
from ernie_cpt.training.weighting import kpi_key, loss_key
from pretrain_tasks.base import stable_seed
from schedules import Stage

if TYPE_CHECKING:
    from ernie_cpt.training.run_setup import Run

TELEMETRY_SEED = 7
STAT_KEYS = ("loss_sum", "sample_size", "correct", "count")


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step did, summed over micro-batches and ranks."""

    task: str  # the step's drawn task
    losses: dict[str, float]  # task -> mean loss per sample (drawn + attached tasks)
    samples: dict[str, int]  # task -> samples that carried its labels
    tokens: int  # non-padding input tokens
    lr: float  # learning rate of the optimizer update
    weights: dict[str, float]  # task -> loss weight of the last micro-batch


def attached_tasks(run: Run, task: str, stage_tasks: tuple[str, ...]) -> list[str]:
    """Token-level tasks that label the batch of a sentence-level ``task`` (the paper's rule)."""
    tasks = run.data.tasks
    if not run.config.train.combine_token_tasks or tasks[task].level != "sentence":
        return []
    return [t for t in stage_tasks if t != task and tasks[t].level == "token"]


def micro_batch(
    run: Run, task: str, stage: Stage, step: int, micro: int
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The collated batch (on the device) of one micro-batch and the tasks it carries labels of."""
    tasks = run.data.tasks
    generator = torch.Generator().manual_seed(
        stable_seed(run.config.train.seed, "batch", step, micro, run.rank) % 2**63
    )
    examples = run.streams[task].next_examples()
    batch = tasks[task].collate(examples, generator)
    names = [task] + [
        t
        for t in attached_tasks(run, task, stage.tasks)
        if tasks[t].attach(batch, examples, generator)
    ]
    batch["task_type_ids"] = torch.full_like(batch["input_ids"], run.state.task_ids[task])
    return {k: v.to(device()) for k, v in batch.items()}, names


def train_step(run: Run, task: str, stage: Stage, step: int) -> StepResult:
    """Gradient-accumulated micro-batches of ``task`` (+ attached token tasks), one update."""
    engine = run.engine
    stats: dict[str, dict[str, float]] = {}
    tokens, weights = 0, {}
    lr = engine.get_lr()[0]
    for micro in range(run.config.train.gradient_accumulation_steps):
        batch, names = micro_batch(run, task, stage, step, micro)
        loss, task_losses, weights = engine(batch, names, step, stage.weighting)
        engine.backward(loss)
        engine.step()
        merge_stats(stats, reduce_stats(task_losses))
        tokens += int(batch["attention_mask"].sum())
    names = sorted(stats)
    totals = all_reduce_sum([tokens] + [stats[n].get(k, 0.0) for n in names for k in STAT_KEYS])
    summed = {
        n: dict(zip(STAT_KEYS, totals[1 + 4 * i : 5 + 4 * i], strict=True))
        for i, n in enumerate(names)
    }
    losses = {n: s["loss_sum"] / max(s["sample_size"], 1.0) for n, s in summed.items()}
    observed = {loss_key(n): value for n, value in losses.items()}
    observed.update(
        {kpi_key(n): s["correct"] / s["count"] for n, s in summed.items() if s["count"] > 0}
    )
    engine.module.weightings[stage.weighting].observe(observed, step)
    return StepResult(
        task=task,
        losses=losses,
        samples={n: int(s["sample_size"]) for n, s in summed.items()},
        tokens=int(totals[0]),
        lr=lr,
        weights={n: float(w) for n, w in weights.items()},
    )


def telemetry_batches(run: Run, tasks: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """One fixed batch per task (held-out split, else the first training examples)."""
    batches = {}
    for name in tasks:
        dataset = run.data.heldout[name] if len(run.data.heldout[name]) else run.data.train[name]
        examples = dataset[: run.config.train.micro_batch_size]
        batch = run.data.tasks[name].collate(
            examples, torch.Generator().manual_seed(TELEMETRY_SEED)
        )
        batch["task_type_ids"] = torch.full_like(batch["input_ids"], run.state.task_ids[name])
        batches[name] = {k: v.to(device()) for k, v in batch.items()}
    return batches
