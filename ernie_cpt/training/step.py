"""One optimizer step: gradient-accumulated micro-batches of one task, reduced over ranks.

A sentence-level task's batch also carries the labels of the stage's token-level tasks (one
forward, several losses, as in the ERNIE 2.0 paper). Everything random about a step is a
pure function of (seed, step, micro-batch, rank).

Non-finite guard (as torchtitan does): the step's statistics are reduced over ranks *before*
the optimizer update, in the one all-reduce the step already makes, together with a
non-finite flag (the loss; at ZeRO 0 with clipping also the gradient norm, since ZeRO 1-3
and bf16 check it themselves) and the stop-signal flag. A non-finite step is skipped on every
rank (``engine.skip_update``: no change to weights, moments or the LR schedule).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ernie_cpt.training.engine import device, skip_update
from ernie_cpt.training.faults import ENV as FAULT_ENV
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
    finite: bool = True  # False: a loss or gradient norm was NaN/inf; the update was skipped
    stop: bool = False  # a rank received SIGTERM/SIGINT: checkpoint after this step and exit


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


def train_step(run: Run, task: str, stage: Stage, step: int, stop_signal: int = 0) -> StepResult:
    """Gradient-accumulated micro-batches of ``task`` (+ attached token tasks), one update.

    ``stop_signal`` is this rank's pending SIGTERM/SIGINT (0: none), agreed on over ranks.
    """
    engine, accumulation = run.engine, run.config.train.gradient_accumulation_steps
    stats: dict[str, dict[str, float]] = {}
    tokens, weights = 0, {}
    lr = engine.get_lr()[0]
    for micro in range(accumulation):
        batch, names = micro_batch(run, task, stage, step, micro)
        with nan_fault(engine, step + 1):
            loss, task_losses, weights = engine(batch, names, step, stage.weighting)
        engine.backward(loss)
        if micro < accumulation - 1:
            engine.step()  # not an accumulation boundary: no update yet
        merge_stats(stats, reduce_stats(task_losses))
        tokens += int(batch["attention_mask"].sum())
    names = sorted(stats)
    local = [stats[n].get(k, 0.0) for n in names for k in STAT_KEYS]
    flags = [0.0 if all(map(math.isfinite, local)) else 1.0, float(stop_signal)]
    totals = reduce_step([tokens, *flags, *local], grad_nonfinite(engine))
    finite = totals[1] == 0 and totals[-1] == 0
    skipped_before = engine.skipped_steps
    if finite:
        engine.step()
    else:
        skip_update(engine)
    # ZeRO 1-3 / bf16 optimizers skip a step with a non-finite gradient norm themselves
    finite = finite and engine.skipped_steps == skipped_before
    summed = {
        n: dict(zip(STAT_KEYS, totals[3 + 4 * i : 7 + 4 * i], strict=True))
        for i, n in enumerate(names)
    }
    losses = {n: s["loss_sum"] / max(s["sample_size"], 1.0) for n, s in summed.items()}
    if finite:
        observe(engine, stage, step, losses, summed)
    return StepResult(
        task=task,
        losses=losses,
        samples={n: int(s["sample_size"]) for n, s in summed.items()},
        tokens=int(totals[0]),
        lr=lr,
        weights={n: float(w) for n, w in weights.items()},
        finite=finite,
        stop=totals[2] > 0,
    )


def observe(
    engine: Any, stage: Stage, step: int, losses: dict[str, float], summed: dict[str, Any]
) -> None:
    """Feed the step's losses and accuracies to the stage's loss-weighting method."""
    observed = {loss_key(n): value for n, value in losses.items()}
    observed.update(
        {kpi_key(n): s["correct"] / s["count"] for n, s in summed.items() if s["count"] > 0}
    )
    engine.module.weightings[stage.weighting].observe(observed, step)


def grad_nonfinite(engine: Any) -> torch.Tensor | None:
    """At ZeRO 0 with clipping: 1.0 if the gradient norm is NaN/inf (a device scalar), else None.

    ZeRO 1-3 and DeepSpeed's bf16 optimizer check the norm in their own step and skip.
    """
    if engine.zero_optimization_stage() != 0 or engine.gradient_clipping() <= 0:
        return None
    if engine.bfloat16_enabled():
        return None
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    if not grads:
        return None
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    return (~torch.isfinite(norm)).double()


def reduce_step(values: list[float], extra: torch.Tensor | None) -> list[float]:
    """Sum ``values`` (+ the device scalar ``extra``, appended) over ranks: one all-reduce."""
    import torch.distributed as dist

    vector = torch.tensor(values, dtype=torch.float64, device=device())
    if extra is not None:
        vector = torch.cat([vector, extra.to(vector.device).reshape(1)])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(vector)
    out = vector.tolist()
    return out if extra is not None else [*out, 0.0]


@contextmanager
def nan_fault(engine: Any, step: int) -> Iterator[None]:
    """Test fault ``ERNIE_CPT_FAULT=nan_loss:<step>`` (or ``<step>+``: that step and every
    later one): the embeddings' output becomes NaN in the forward of that step."""
    import os

    point = os.environ.get(FAULT_ENV, "")
    first = point.removeprefix("nan_loss:").rstrip("+")
    active = point.startswith("nan_loss:") and first.isdigit()
    active = active and (step == int(first) or (point.endswith("+") and step >= int(first)))
    if not active:
        yield
        return
    hook = engine.module.model.encoder.embeddings.register_forward_hook(
        lambda module, inputs, output: output * float("nan")
    )
    try:
        yield
    finally:
        hook.remove()


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
