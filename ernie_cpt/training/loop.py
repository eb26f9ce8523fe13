"""The training loop: schedule -> task of each step -> one DeepSpeed step -> logs/checkpoints.

``train`` builds the parts (``build_*`` functions below), then runs a plain loop. Everything
random about a step is a pure function of (seed, step, rank) except dropout, whose torch RNG
state is saved per rank with each checkpoint; so a resumed run repeats the uninterrupted
run's losses bit for bit on CPU.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ernie_cpt.config import RunConfig, diff_configs, save_config
from ernie_cpt.data.prepare import PreparedData, prepare_data
from ernie_cpt.data.task_stream import TaskStream
from ernie_cpt.model import build_model, grow_task_embeddings
from ernie_cpt.training import checkpoint as ckpt
from ernie_cpt.training.add_tasks import transfer
from ernie_cpt.training.engine import all_reduce_sum, build_engine, device, init_distributed
from ernie_cpt.training.gradient_telemetry import gradient_telemetry
from ernie_cpt.training.heldout_eval import evaluate
from ernie_cpt.training.run_log import JsonlLog, WandbRun, flat_metrics
from ernie_cpt.training.train_module import TrainModule, describe, merge_stats, reduce_stats
from ernie_cpt.training.weighting import build_weighting, check_zero_stage, kpi_key, loss_key
from pretrain_tasks.base import stable_seed
from schedules import Schedule, Stage, build_schedule, sample_task
from schedules.sampling import with_dataset_sizes

log = logging.getLogger(__name__)

TELEMETRY_SEED = 7
# Keys that must match between a checkpoint and the config resuming it.
RESUME_KEYS = (
    "model",
    "tokenizer",
    "data.corpus",
    "data.max_seq_length",
    "data.seed",
    "tasks",
    "schedule",
    "train.micro_batch_size",
    "train.gradient_accumulation_steps",
    "train.zero_stage",
    "train.precision",
    "train.seed",
    "train.combine_token_tasks",
)


@dataclass
class TrainState:
    """Everything besides the engine that a resumed run needs."""

    step: int = 0
    consumed: dict[str, dict[str, int]] = field(
        default_factory=dict
    )  # stage index -> task -> steps
    tokens: int = 0
    samples: dict[str, int] = field(default_factory=dict)
    cursors: dict[str, dict[str, int]] = field(default_factory=dict)
    task_ids: dict[str, int] = field(default_factory=dict)
    run_id: str = ""
    elapsed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return dict(self.__dict__)


@dataclass
class Run:
    """The parts of a run, built once."""

    config: RunConfig
    run_dir: Path
    rank: int
    world_size: int
    data: PreparedData
    schedule: Schedule
    engine: Any
    streams: dict[str, TaskStream]
    state: TrainState


def build_schedule_for(config: RunConfig, sizes: Mapping[str, int]) -> Schedule:
    """The configured schedule, with dataset sizes filled in for size-based samplers."""
    return with_dataset_sizes(schedule_from_config(config), sizes)


def schedule_from_config(config: RunConfig) -> Schedule:
    """``schedules.build_schedule`` from the schedule section and the task list."""
    s = config.schedule
    return build_schedule(
        s.kind,
        list(config.tasks),
        s.iterations_per_task,
        s.stages,
        s.sampling,
        sampling_options=s.sampling_options,
        weighting=s.weighting,
        weighting_options=s.weighting_options,
    )


def build_weightings(schedule: Schedule, zero_stage: int) -> dict[str, Any]:
    """One loss-weighting module per method the schedule's stages use (checked for ZeRO)."""
    modules: dict[str, Any] = {}
    for stage in schedule.stages:
        name, options = stage.weighting, dict(stage.weighting_options)
        check_zero_stage(name, zero_stage)
        if name in modules and modules[name][1] != options:
            raise ValueError(f"stages use {name!r} with different options; use one set per run")
        if name not in modules:
            modules[name] = (build_weighting(name, schedule.tasks, options), options)
    return {name: module for name, (module, _) in modules.items()}


def build_streams(
    config: RunConfig, data: PreparedData, rank: int, world_size: int
) -> dict[str, TaskStream]:
    """One endless, sharded batch stream per task; refuses tasks without examples."""
    streams = {}
    for name, dataset in data.train.items():
        if len(dataset) == 0:
            skipped = data.report["tasks"][name].get("train_skipped_documents", {})
            raise ValueError(
                f"task {name!r} built no training examples from {config.data.corpus} (skipped: {skipped})"
            )
        streams[name] = TaskStream(
            dataset, name, config.train.micro_batch_size, config.train.seed, rank, world_size
        )
    return streams


def resume_checkpoint(root: Path, mode: str) -> Path | None:
    """The checkpoint to resume from under ``--resume auto|must|never``."""
    if mode not in ("auto", "must", "never"):
        raise ValueError(f"--resume must be auto, must or never, got {mode!r}")
    if mode == "never":
        return None
    ckpt.clean_partial(root)
    found = ckpt.newest_valid(root)
    if found is None and mode == "must":
        raise SystemExit(f"--resume must: no valid checkpoint under {root}")
    if found is None:
        log.warning("no valid checkpoint under %s: starting fresh", root)
    return found


def added_tasks(saved: Mapping[str, Any], config: RunConfig) -> list[str]:
    """Tasks the config adds to a checkpoint's run (the old ones must all still be there)."""
    old = list(saved["config"]["tasks"])
    missing = [t for t in old if t not in config.tasks]
    if missing:
        raise SystemExit(f"cannot resume: the config drops tasks of the checkpoint: {missing}")
    return [t for t in config.tasks if t not in old]


def check_compatible(
    saved: Mapping[str, Any], config: RunConfig, data: PreparedData, added: list[str]
) -> None:
    """Refuse to resume with a config that changes what the checkpoint means.

    With ``added`` tasks, the new tasks' options and the schedule may differ (the schedule
    is then checked by ``check_schedule_prefix``).
    """
    from ernie_cpt.config import flatten

    ignored = ("schedule", *(f"tasks.{t}" for t in added)) if added else ()

    def under(key: str, prefix: str) -> bool:
        return key == prefix or key.startswith(prefix + ".")

    def pick(tree: Mapping[str, Any]) -> dict[str, Any]:
        return {
            k: v
            for k, v in flatten(tree).items()
            if any(under(k, p) for p in RESUME_KEYS) and not any(under(k, p) for p in ignored)
        }

    differing = diff_configs(pick(saved["config"]), pick(config.to_dict()))
    if saved.get("tokenizer_fingerprint") != data.tokenizer_fingerprint:
        differing.append("tokenizer (vocabulary differs)")
    if differing:
        raise SystemExit(
            "cannot resume: the config differs from the checkpoint's in: " + ", ".join(differing)
        )


def check_schedule_prefix(old: Schedule, new: Schedule, step: int) -> None:
    """Adding tasks: ``step`` ends a stage of both schedules, and the stages so far agree."""
    if step not in old.boundaries or step not in new.boundaries:
        raise SystemExit(
            f"cannot add tasks at step {step}: resume from the end of a stage "
            f"(old stages end at {old.boundaries[1:]}, new at {new.boundaries[1:]})"
        )
    done = old.boundaries.index(step)
    before = [s.to_dict() for s in old.stages[:done]]
    after = [s.to_dict() for s in new.stages[:done]]
    if before != after:
        raise SystemExit(
            "cannot add tasks: the new schedule changes stages already trained "
            f"(old {before}, new {after}); keep them and append stages"
        )


def build_module(
    config: RunConfig, data: PreparedData, tasks: list[str], schedule: Schedule, task_rows: int
) -> TrainModule:
    """Model (heads of ``tasks``, task embedding of at least ``task_rows`` rows) + weightings."""
    chosen = {name: data.tasks[name] for name in tasks}
    model = build_model(config.model, chosen, len(data.tokenizer), data.tokenizer.pad_token_id)
    grow_task_embeddings(model, task_rows)
    return TrainModule(model, chosen, build_weightings(schedule, config.train.zero_stage))


def load_with_added_tasks(
    config: RunConfig, data: PreparedData, saved: Mapping[str, Any], checkpoint: Path, engine: Any
) -> None:
    """Load the checkpoint into an engine of the old shape, then move its state into ``engine``."""
    import torch.distributed as dist

    old_schedule = Schedule.from_dict(saved["schedule"])
    rows = max(saved["train_state"]["task_ids"].values()) + 1
    module = build_module(config, data, list(saved["config"]["tasks"]), old_schedule, rows)
    old_engine = build_engine(module, config.train, old_schedule.total_steps, dist.get_world_size())
    old_engine.load_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
    transfer(old_engine, engine)


def setup(config: RunConfig, run_dir: Path, resume: str, progress: bool) -> Run:
    """Process group, data, model, engine and (possibly restored) state."""
    if config.train.grad_telemetry_every and config.train.zero_stage == 3:
        raise ValueError("train.grad_telemetry_every needs full parameters: use ZeRO stage 0-2")
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    rank, world_size = init_distributed()
    torch.manual_seed(stable_seed(config.train.seed, "init") % 2**63)
    run_dir.mkdir(parents=True, exist_ok=True)
    root = run_dir / "checkpoints"
    found = resume_checkpoint(root, resume)  # before any expensive work: --resume must fails fast
    data = _prepare_on_rank_zero(config, rank, progress)
    schedule = build_schedule_for(config, {name: len(ds) for name, ds in data.train.items()})
    saved = ckpt.read_state(found) if found is not None else None
    added = added_tasks(saved, config) if saved else []
    if saved:
        check_compatible(saved, config, data, added)
    task_ids = dict(saved["train_state"]["task_ids"]) if saved else {}
    for name in schedule.tasks:  # a task keeps its id for life; new tasks get the next ones
        task_ids.setdefault(name, len(task_ids))
    module = build_module(config, data, list(config.tasks), schedule, max(task_ids.values()) + 1)
    model = module.model
    engine = build_engine(module, config.train, schedule.total_steps, world_size)
    streams = build_streams(config, data, rank, world_size)
    state = TrainState(task_ids=task_ids, run_id=uuid.uuid4().hex[:12])
    if saved:
        if added:
            check_schedule_prefix(
                Schedule.from_dict(saved["schedule"]), schedule, saved["train_state"]["step"]
            )
            load_with_added_tasks(config, data, saved, found, engine)
            log.info("added tasks %s to the run", added)
        else:
            engine.load_checkpoint(str(root), tag=found.name)
        state = TrainState(**saved["train_state"])
        state.task_ids = task_ids
        for name, stream in streams.items():
            stream.load_state(state.cursors.get(name, stream.state()))
        ckpt.set_rng_state(ckpt.load_rng(found, rank))
        log.info("resumed from %s at step %d", found, state.step)
    if rank == 0:
        save_config(config, run_dir / "config.yaml")
        (run_dir / "data_report.json").write_text(json.dumps(data.report, indent=2))
        data.tokenizer.save_pretrained(str(run_dir / "tokenizer"))
        model.encoder.config.to_json_file(str(run_dir / "encoder_config.json"))
        log.info(
            "model: %s; schedule %s: %d steps", describe(model), schedule.name, schedule.total_steps
        )
    return Run(config, run_dir, rank, world_size, data, schedule, engine, streams, state)


def _prepare_on_rank_zero(config: RunConfig, rank: int, progress: bool) -> PreparedData:
    import torch.distributed as dist

    if rank == 0:
        data = prepare_data(config, progress=progress)
    dist.barrier()
    if rank != 0:
        data = prepare_data(config, progress=False)
    return data


def attached_tasks(run: Run, task: str, stage_tasks: tuple[str, ...]) -> list[str]:
    """Token-level tasks that label the batch of a sentence-level ``task`` (the paper's rule)."""
    tasks = run.data.tasks
    if not run.config.train.combine_token_tasks or tasks[task].level != "sentence":
        return []
    return [t for t in stage_tasks if t != task and tasks[t].level == "token"]


def train_step(run: Run, task: str, stage: Stage, step: int) -> dict[str, Any]:
    """Gradient-accumulated micro-batches of ``task`` (+ attached token tasks), one update."""
    engine, tasks = run.engine, run.data.tasks
    stats: dict[str, dict[str, float]] = {}
    tokens, weights = 0, {}
    lr = engine.get_lr()[0]
    for micro in range(run.config.train.gradient_accumulation_steps):
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
        batch = {k: v.to(device()) for k, v in batch.items()}
        loss, task_losses, weights = engine(batch, names, step, stage.weighting)
        engine.backward(loss)
        engine.step()
        merge_stats(stats, reduce_stats(task_losses))
        tokens += int(batch["attention_mask"].sum())
    names = sorted(stats)
    keys = ("loss_sum", "sample_size", "correct", "count")
    totals = all_reduce_sum([tokens] + [stats[n].get(k, 0.0) for n in names for k in keys])
    summed = {
        n: dict(zip(keys, totals[1 + 4 * i : 5 + 4 * i], strict=True)) for i, n in enumerate(names)
    }
    losses = {n: s["loss_sum"] / max(s["sample_size"], 1.0) for n, s in summed.items()}
    observed = {loss_key(n): value for n, value in losses.items()}
    observed.update(
        {kpi_key(n): s["correct"] / s["count"] for n, s in summed.items() if s["count"] > 0}
    )
    engine.module.weightings[stage.weighting].observe(observed, step)
    return {
        "task": task,
        "losses": losses,
        "samples": {n: int(s["sample_size"]) for n, s in summed.items()},
        "tokens": int(totals[0]),
        "lr": lr,
        "weights": {n: float(w) for n, w in weights.items()},
    }


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


def fault_point(name: str, step: int) -> None:
    """Fault injection for tests: ``ERNIE_CPT_FAULT=<name>:<step>`` SIGKILLs this process there.

    Points: ``after_step`` (after the step's metrics row is written) and ``in_save`` (after
    the engine state is written, before the checkpoint is complete).
    """
    if os.environ.get("ERNIE_CPT_FAULT") == f"{name}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def save(run: Run, step: int) -> None:
    """A checkpoint after ``step`` steps (collective: every rank calls it)."""
    import torch.distributed as dist

    root = run.run_dir / "checkpoints"
    tmp_tag = f".tmp-{ckpt.tag_for(step)}"
    run.state.cursors = {name: s.state() for name, s in run.streams.items()}
    run.engine.save_checkpoint(str(root), tag=tmp_tag, save_latest=False)
    ckpt.save_rng(root / tmp_tag, run.rank)
    fault_point("in_save", step)
    weights = consolidated_state_dict(run.engine)
    dist.barrier()
    if run.rank == 0:
        save_weights(weights, root / tmp_tag / ckpt.WEIGHTS)
        state = {
            "train_state": run.state.to_dict(),
            "config": run.config.to_dict(),
            "tokenizer_fingerprint": run.data.tokenizer_fingerprint,
            "data_fingerprint": run.data.fingerprint,
            "schedule": run.schedule.to_dict(),
            "world_size": run.world_size,
        }
        ckpt.finalize(
            root / tmp_tag,
            root,
            step,
            state,
            run.config.train.keep_checkpoints,
            run.schedule.boundaries[1:],
        )
    dist.barrier()


def consolidated_state_dict(engine: Any) -> dict[str, torch.Tensor] | None:
    """Full model weights on rank 0 (gathered from all ranks under ZeRO-3)."""
    if engine.zero_optimization_stage() == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    return engine.module.state_dict()


def save_weights(state: Mapping[str, torch.Tensor] | None, path: Path) -> None:
    """Save weights as safetensors, storing tied (shared) tensors once.

    Non-tensor entries (loss weightings' ``_extra_state`` history) are left to the engine
    checkpoint; this file is for export and inspection.
    """
    from safetensors.torch import save_file

    unique, seen = {}, set()
    for key, tensor in (state or {}).items():
        if not isinstance(tensor, torch.Tensor):
            continue
        if tensor.data_ptr() in seen and tensor.numel() > 0:
            continue
        seen.add(tensor.data_ptr())
        unique[key] = tensor.detach().to("cpu", torch.float32).contiguous()
    save_file(unique, str(path))


def run_evaluation(
    run: Run, step: int, stage: int, kind: str, log_file: JsonlLog | None, wandb_run: WandbRun
) -> None:
    """Held-out metrics of every task; one row in eval.jsonl.

    ``kind`` is "initial" (before step 1, stage -1: the b[j] of forgetting metrics),
    "stage_end" (after the last step of ``stage``) or "periodic" (``train.eval_every``).
    """
    if run.config.train.eval_batches <= 0:
        return
    metrics = evaluate(
        run.engine, run.data, run.state.task_ids, run.config.train, run.rank, run.world_size
    )
    if log_file is not None:
        log_file.write({"step": step, "stage": stage, "kind": kind, "metrics": metrics})
    wandb_run.log({f"eval/{t}/{k}": v for t, m in metrics.items() for k, v in m.items()}, step)


def step_row(
    run: Run, stage_index: int, task: str, result: Mapping[str, Any], seconds: float
) -> dict[str, Any]:
    """The metrics.jsonl row of the step just taken (+ gradient telemetry on its steps)."""
    state, every = run.state, run.config.train.grad_telemetry_every
    row = {
        "step": state.step,
        "stage": stage_index,
        "task": task,
        "task_id": state.task_ids[task],
        "losses": result["losses"],
        "weights": result["weights"],
        "lr": result["lr"],
        "tokens": state.tokens,
        "step_tokens": result["tokens"],
        "tokens_per_s": result["tokens"] / seconds if seconds > 0 else 0.0,
        "samples": result["samples"],
    }
    if every and state.step % every == 0:
        stage_tasks = run.schedule.stages[stage_index].tasks
        batches = telemetry_batches(run, stage_tasks)
        row["grad"] = gradient_telemetry(
            run.engine.module, batches, run.config.train.grad_telemetry_scope
        )
    return row


def train(
    config: RunConfig,
    run_dir: Path,
    *,
    max_steps: int | None = None,
    resume: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or continue) the configured schedule; returns a summary."""
    from tqdm import tqdm

    run = setup(config, Path(run_dir), resume, progress)
    state, schedule, rank = run.state, run.schedule, run.rank
    stop = min(schedule.total_steps, max_steps) if max_steps is not None else schedule.total_steps
    resumed_at = state.step if state.step > 0 else None
    metrics = JsonlLog(run.run_dir / "metrics.jsonl", resumed_at) if rank == 0 else None
    evals = JsonlLog(run.run_dir / "eval.jsonl", resumed_at) if rank == 0 else None
    wandb_run = WandbRun(
        config.logging, run.run_dir, config.to_dict(), state.run_id, enabled=rank == 0
    )
    if state.step == 0:
        run_evaluation(run, 0, -1, "initial", evals, wandb_run)  # the initial model: b[j]
    bar = tqdm(
        total=stop,
        initial=state.step,
        disable=rank != 0 or not config.logging.progress_bar,
        desc="train",
    )
    while state.step < stop:
        step, started = state.step, time.perf_counter()
        stage_index = schedule.stage_at(step)
        stage = schedule.stages[stage_index]
        consumed = state.consumed.setdefault(str(stage_index), {})
        task = sample_task(stage, consumed, step, config.schedule.seed)
        result = train_step(run, task, stage, step)
        consumed[task] = consumed.get(task, 0) + 1
        for name, count in result["samples"].items():
            state.samples[name] = state.samples.get(name, 0) + count
        state.tokens += result["tokens"]
        state.step += 1
        seconds = time.perf_counter() - started
        state.elapsed += seconds
        row = step_row(run, stage_index, task, result, seconds)
        if "grad" in row:
            wandb_run.log_matrix("grad/cosine", row["grad"]["cosine"], state.step)
        if metrics is not None:
            metrics.write(row)
        wandb_run.log(flat_metrics(row), state.step)
        fault_point("after_step", state.step)
        bar.update(1)
        bar.set_postfix(stage=stage_index, task=task, loss=f"{sum(result['losses'].values()):.3f}")
        stage_end = state.step == schedule.boundaries[stage_index + 1]
        if stage_end:
            run_evaluation(run, state.step, stage_index, "stage_end", evals, wandb_run)
            wandb_run.log({"schedule/stage_end": stage_index}, state.step)
        elif config.train.eval_every and state.step % config.train.eval_every == 0:
            run_evaluation(run, state.step, stage_index, "periodic", evals, wandb_run)
        if stage_end or state.step % config.train.checkpoint_every == 0 or state.step == stop:
            save(run, state.step)
    bar.close()
    summary = {
        "steps": state.step,
        "total_steps": schedule.total_steps,
        "tokens": state.tokens,
        "elapsed_s": round(state.elapsed, 2),
    }
    if rank == 0 and state.step == schedule.total_steps:
        from ernie_cpt.export import export_run

        export_run(run.run_dir, run.run_dir / "export")
        summary["export"] = str(run.run_dir / "export")
    for handle in (metrics, evals):
        if handle is not None:
            handle.close()
    wandb_run.finish()
    _shutdown()
    return summary


def _shutdown() -> None:
    """Barrier + destroy: avoids rare aborts at exit seen with several ZeRO-3 processes."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
