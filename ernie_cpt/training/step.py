"""One optimizer step: gradient-accumulated micro-batches of one task, reduced over ranks.

A sentence-level task's batch also carries the labels of the stage's token-level tasks (one
forward, several losses, as in the ERNIE 2.0 paper), with one masked-LM labelling: when
several token tasks mask inputs (mlm, knowledge_masking), only the first of them in the
config's ``tasks`` order is attached (two masking draws would mask ~27% of the tokens and run two vocabulary
decoders). Everything random about a micro-batch is a pure function of (seed, task, stream
cursor, rank), so ``input_pipeline`` can build batches before the schedule draws them.

Host-device synchronisation: the step's statistics stay on the device until the one
all-reduce at its end, whose result is read once (``tolist``); token counts come from the
host-side batch. Nothing else in the step reads a device value.

Non-finite guard (as torchtitan does): the step's statistics are reduced over ranks *before*
the optimizer update, in the one all-reduce the step already makes, together with a
non-finite flag (the loss; at ZeRO 0 with clipping also the gradient norm, since ZeRO 1-3
and bf16 check it themselves) and the stop-signal flag. A non-finite step is skipped on every
rank (``engine.skip_update``: no change to weights, moments or the LR schedule).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from ernie_cpt.model.sparse_top import top_row_columns
from ernie_cpt.training.engine import device, skip_update
from ernie_cpt.training.faults import ENV as FAULT_ENV
from ernie_cpt.training.input_pipeline import Cursor, InputPipeline, Prepared, pin, to_device
from ernie_cpt.training.weighting import kpi_key, loss_key
from pretrain_tasks.base import TaskLoss, declared_positions, stable_seed
from schedules import Stage

if TYPE_CHECKING:
    from ernie_cpt.training.run_setup import Run

TELEMETRY_SEED = 7
STAT_KEYS = ("loss_sum", "sample_size", "correct", "count")
_EMPTY = torch.zeros(0, dtype=torch.float64)


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
    """Token-level tasks that label the batch of a sentence-level ``task`` (the paper's rule),
    with at most one that masks inputs: the first such task in the config's ``tasks``."""
    tasks = run.data.tasks
    if not run.config.train.combine_token_tasks or tasks[task].level != "sentence":
        return []
    token = [t for t in stage_tasks if t != task and tasks[t].level == "token"]
    order = list(run.config.tasks)  # the config's task order decides, not the schedule's
    maskers = sorted(
        (t for t in token if getattr(tasks[t], "masks_inputs", False)), key=order.index
    )
    return [t for t in token if t not in maskers[1:]]


def build_micro_batch(
    run: Run, task: str, stage_tasks: tuple[str, ...], cursor: Cursor
) -> Prepared:
    """The host-side micro-batch of ``task`` at stream ``cursor`` (a pure function of it)."""
    tasks, stream = run.data.tasks, run.streams[task]
    generator = torch.Generator().manual_seed(
        stable_seed(run.config.train.seed, "batch", task, *cursor, run.rank) % 2**63
    )
    indices, after = stream.peek(cursor)
    examples = stream.dataset[indices]
    batch = tasks[task].collate(examples, generator)
    names = [task] + [
        t
        for t in attached_tasks(run, task, stage_tasks)
        if tasks[t].attach(batch, examples, generator)
    ]
    batch["task_type_ids"] = torch.full_like(batch["input_ids"], run.state.task_ids[task])
    if sparse_top(run):
        batch.update(read_rows(batch, [tasks[name] for name in names]))
    tokens = int(batch["attention_mask"].sum())  # host tensor: no device sync
    return Prepared(pin(batch), names, tokens, after)


def sparse_top(run: Run) -> bool:
    """Whether the run computes the top layer at the read rows only: asked for
    (``train.sparse_top_layer``) and supported by its model (hard sharing, sdpa)."""
    return run.config.train.sparse_top_layer and run.engine.module.model.sparse_top_supported()


def read_rows(batch: Mapping[str, torch.Tensor], tasks: list[Any]) -> dict[str, torch.Tensor]:
    """``sparse_top`` columns of the rows the batch's tasks read ({} when a task does not
    say, or when they read too much of the batch for the sparse top layer to pay)."""
    positions = [declared_positions(task, batch) for task in tasks]
    if any(p is None for p in positions):
        return {}
    size, length = batch["input_ids"].shape
    return top_row_columns(torch.cat(positions), size, length) or {}


def micro_batch(
    run: Run, task: str, stage: Stage, pipeline: InputPipeline | None = None
) -> Prepared:
    """The next micro-batch of ``task`` (from ``pipeline`` when given, else built now)."""
    if pipeline is None:
        pipeline = InputPipeline(run.streams, partial(build_micro_batch, run), depth=0)
    return pipeline.take(task, stage.tasks)


def train_step(
    run: Run,
    task: str,
    stage: Stage,
    step: int,
    stop_signal: int = 0,
    pipeline: InputPipeline | None = None,
) -> StepResult:
    """Gradient-accumulated micro-batches of ``task`` (+ attached token tasks), one update.

    ``stop_signal`` is this rank's pending SIGTERM/SIGINT (0: none), agreed on over ranks;
    ``pipeline`` supplies micro-batches built ahead (None: built in the step, same batches).
    """
    engine, accumulation = run.engine, run.config.train.gradient_accumulation_steps
    sums: dict[str, torch.Tensor] = {}  # task -> (4,) STAT_KEYS summed, on the device
    tokens, weights, lr = 0, {}, engine.get_lr()[0]
    for micro in range(accumulation):
        prepared = micro_batch(run, task, stage, pipeline)
        task_losses, weights = forward_backward(engine, prepared, step, stage.weighting)
        if micro < accumulation - 1:
            engine.step()  # not an accumulation boundary: no update yet
        for name, stats in stat_vectors(task_losses).items():
            sums[name] = sums[name] + stats if name in sums else stats
        tokens += prepared.tokens
    names, weight_names = sorted(sums), sorted(weights)
    totals = reduce_step(
        [tokens, float(stop_signal)],
        [torch.stack([sums[n] for n in names]).flatten(), weight_vector(weights, weight_names)],
        grad_nonfinite(engine),
    )
    first = 3 + 4 * len(names)  # weights: summed over ranks, every rank has the same
    weight_values = [w / run.world_size for w in totals[first : first + len(weight_names)]]
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
        weights=dict(zip(weight_names, weight_values, strict=True)),
        finite=finite,
        stop=totals[2] > 0,
    )


def forward_backward(
    engine: Any, prepared: Prepared, step: int, weighting: str
) -> tuple[dict[str, TaskLoss], dict[str, Any]]:
    """One micro-batch's forward and backward: (per-task losses, loss weights)."""
    batch = to_device(prepared.batch, device())
    padded = prepared.tokens < batch["attention_mask"].numel()  # host count: no device read
    with nan_fault(engine, step + 1):
        loss, task_losses, weights = engine(batch, prepared.names, step, weighting, padded=padded)
    engine.backward(loss)
    return task_losses, weights


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
    norm = torch.nn.utils.get_total_norm(grads, foreach=True)  # one fused op, not one per tensor
    return (~torch.isfinite(norm)).double()


def stat_vectors(losses: Mapping[str, TaskLoss]) -> dict[str, torch.Tensor]:
    """Task -> (4,) float64 on the device: its STAT_KEYS (0 where absent); no host read."""
    out = {}
    for name, loss in losses.items():
        stats = {**loss.stats, "sample_size": loss.sample_size}
        zero = torch.zeros((), dtype=torch.float64, device=loss.loss_sum.device)
        out[name] = torch.stack(
            [stats[k].detach().double().reshape(()) if k in stats else zero for k in STAT_KEYS]
        )
    return out


def weight_vector(weights: Mapping[str, Any], names: list[str]) -> torch.Tensor:
    """(len(names),) float64 on the device: the loss weights (floats or device scalars)."""
    values = [torch.as_tensor(weights[n], dtype=torch.float64, device=device()) for n in names]
    return torch.stack([v.reshape(()) for v in values]) if values else _EMPTY.to(device())


def reduce_step(
    values: list[float], device_values: list[torch.Tensor], extra: torch.Tensor | None
) -> list[float]:
    """One all-reduce (sum over ranks), one read: [host ``values`` (tokens, stop flag), a
    non-finite flag of the statistics, ``device_values`` (statistics, then loss weights,
    which the caller divides by world size), the device scalar ``extra`` (0 when None)].
    The statistics' flag is computed on the device: nothing is read before this."""
    import torch.distributed as dist

    stats = torch.cat([v.double() for v in device_values]).to(device())
    flag = (~torch.isfinite(stats)).any().double().reshape(1)
    extra = extra if extra is not None else _EMPTY.new_zeros(1)
    host = torch.tensor(values, dtype=torch.float64)
    vector = torch.cat(
        [
            host[:1].to(device()),
            flag,
            host[1:].to(device()),
            stats,
            extra.to(device()).double().reshape(1),
        ]
    )
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(vector)
    return vector.tolist()  # the step's one host-device synchronisation


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
