"""The training loop: schedule -> task of each step -> one DeepSpeed step -> logs/checkpoints.

``train`` assembles the run (``run_setup.setup``), then runs a plain loop whose bookkeeping,
logging, evaluation and checkpointing are the small functions below. Everything random about
a step is a pure function of (seed, step, rank) except dropout, whose torch RNG state is saved
per rank with each checkpoint; so a resumed run repeats the uninterrupted run's losses bit for
bit on CPU.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ernie_cpt.config import RunConfig
from ernie_cpt.training import checkpoint as ckpt
from ernie_cpt.training.build import build_schedule_for, schedule_from_config
from ernie_cpt.training.faults import fault_point
from ernie_cpt.training.gradient_telemetry import gradient_telemetry
from ernie_cpt.training.heldout_eval import evaluate
from ernie_cpt.training.input_pipeline import InputPipeline
from ernie_cpt.training.run_dir import locked
from ernie_cpt.training.run_log import JsonlLog, WandbRun, flat_metrics
from ernie_cpt.training.run_setup import Run, RunOptions, setup
from ernie_cpt.training.signals import StopRequest
from ernie_cpt.training.step import StepResult, build_micro_batch, telemetry_batches, train_step
from schedules import sample_task

__all__ = ["RunOptions", "TrainingHalted", "build_schedule_for", "schedule_from_config", "train"]


class TrainingHalted(SystemExit):
    """Too many consecutive non-finite steps: the run stops without a checkpoint (exit 1)."""


@dataclass
class Logs:
    """Where a run reports: metrics.jsonl and eval.jsonl (rank 0 only) and W&B."""

    metrics: JsonlLog | None
    evals: JsonlLog | None
    wandb: WandbRun

    def close(self) -> None:
        """Close the files and finish the W&B run."""
        for handle in (self.metrics, self.evals):
            if handle is not None:
                handle.close()
        self.wandb.finish()


def open_logs(run: Run) -> Logs:
    """Open the run's logs; on resume, rows after the resumed step are dropped first."""
    resumed_at = run.state.step if run.state.step > 0 else None
    rank0 = run.rank == 0
    return Logs(
        JsonlLog(run.run_dir / "metrics.jsonl", resumed_at) if rank0 else None,
        JsonlLog(run.run_dir / "eval.jsonl", resumed_at) if rank0 else None,
        WandbRun(
            run.config.logging, run.run_dir, run.config.to_dict(), run.state.run_id, enabled=rank0
        ),
    )


def run_evaluation(run: Run, logs: Logs, stage: int, kind: str) -> None:
    """Held-out metrics of every task after ``run.state.step`` steps; one row in eval.jsonl.

    ``kind`` is "initial" (before step 1, stage -1: the b[j] of forgetting metrics),
    "stage_end" (after the last step of ``stage``) or "periodic" (``train.eval_every``).
    """
    if run.config.train.eval_batches <= 0:
        return
    step = run.state.step
    metrics = evaluate(
        run.engine, run.data, run.state.task_ids, run.config.train, run.rank, run.world_size
    )
    if logs.evals is not None:
        logs.evals.write({"step": step, "stage": stage, "kind": kind, "metrics": metrics})
    logs.wandb.log({f"eval/{t}/{k}": v for t, m in metrics.items() for k, v in m.items()}, step)


def record_step(run: Run, stage_index: int, result: StepResult, seconds: float) -> None:
    """Count the step just taken into the trainer state (budgets, samples, tokens, time)."""
    state = run.state
    consumed = state.consumed.setdefault(str(stage_index), {})
    consumed[result.task] = consumed.get(result.task, 0) + 1
    for name, count in result.samples.items():
        state.samples[name] = state.samples.get(name, 0) + count
    state.tokens += result.tokens
    state.step += 1
    state.elapsed += seconds
    state.nonfinite_steps += 0 if result.finite else 1
    state.nonfinite_streak = 0 if result.finite else state.nonfinite_streak + 1


def check_streak(run: Run) -> None:
    """Halt after ``train.max_nonfinite_steps`` non-finite steps in a row (none checkpointed)."""
    streak, limit = run.state.nonfinite_streak, run.config.train.max_nonfinite_steps
    if streak and limit and streak >= limit:
        first = run.state.step - streak + 1
        raise TrainingHalted(
            f"halting: {streak} consecutive steps ({first}-{run.state.step}) had a non-finite "
            "loss or gradient norm and were skipped; no checkpoint was written after them. "
            "Lower train.lr, check the data, or raise train.max_nonfinite_steps"
        )


def step_row(run: Run, stage_index: int, result: StepResult, seconds: float) -> dict[str, Any]:
    """The metrics.jsonl row of the step just taken (+ gradient telemetry on its steps)."""
    state, every = run.state, run.config.train.grad_telemetry_every
    row = {
        "step": state.step,
        "stage": stage_index,
        "task": result.task,
        "task_id": state.task_ids[result.task],
        "losses": result.losses,
        "weights": result.weights,
        "lr": result.lr,
        "tokens": state.tokens,
        "step_tokens": result.tokens,
        "tokens_per_s": result.tokens / seconds if seconds > 0 else 0.0,
        "samples": result.samples,
        "skipped": not result.finite,
        "nonfinite_steps": state.nonfinite_steps,
    }
    sharing = run.engine.module.model.sharing_telemetry()  # before telemetry's forwards
    if sharing:
        row["sharing"] = sharing
    if every and state.step % every == 0:
        stage_tasks = run.schedule.stages[stage_index].tasks
        batches = telemetry_batches(run, stage_tasks)
        row["grad"] = gradient_telemetry(
            run.engine.module, batches, run.config.train.grad_telemetry_scope
        )
    return row


def log_step(run: Run, logs: Logs, row: dict[str, Any]) -> None:
    """Write a step's row to metrics.jsonl and W&B (with the gradient cosine table if any)."""
    if "grad" in row:
        logs.wandb.log_matrix("grad/cosine", row["grad"]["cosine"], run.state.step)
    if logs.metrics is not None:
        logs.metrics.write(row)
    extra = {"train/skipped": int(row["skipped"]), "train/nonfinite_steps": row["nonfinite_steps"]}
    logs.wandb.log({**flat_metrics(row), **extra}, run.state.step)


def save(run: Run) -> None:
    """A checkpoint after ``run.state.step`` steps (collective: every rank calls it)."""
    run.state.cursors = {name: s.state() for name, s in run.streams.items()}
    state = {
        "train_state": run.state.to_dict(),
        "config": run.config.to_dict(),
        "tokenizer_fingerprint": run.data.tokenizer_fingerprint,
        "data_fingerprint": run.data.fingerprint,
        "schedule": run.schedule.to_dict(),
        "world_size": run.world_size,
    }
    ckpt.save(
        run.engine,
        run.run_dir / "checkpoints",
        run.state.step,
        run.rank,
        state,
        run.config.train.keep_checkpoints,
        run.schedule.boundaries[1:],
    )


def after_step(run: Run, logs: Logs, stage_index: int, stop: int, signalled: bool) -> None:
    """Evaluate at stage ends (and every ``eval_every``), checkpoint when one is due or a stop
    signal arrived."""
    step, train_config = run.state.step, run.config.train
    stage_end = step == run.schedule.boundaries[stage_index + 1]
    if stage_end:
        run_evaluation(run, logs, stage_index, "stage_end")
        logs.wandb.log({"schedule/stage_end": stage_index}, step)
    elif train_config.eval_every and step % train_config.eval_every == 0:
        run_evaluation(run, logs, stage_index, "periodic")
    if stage_end or step % train_config.checkpoint_every == 0 or step == stop or signalled:
        save(run)


def progress_bar(run: Run, stop: int) -> Any:
    """A tqdm bar on rank 0 (disabled elsewhere or by ``logging.progress_bar: false``)."""
    from tqdm import tqdm

    disabled = run.rank != 0 or not run.config.logging.progress_bar
    return tqdm(total=stop, initial=run.state.step, disable=disabled, desc="train")


def train(
    config: RunConfig,
    run_dir: Path,
    *,
    max_steps: int | None = None,
    resume: str = "auto",
    progress: bool = True,
    options: RunOptions | None = None,
) -> dict[str, Any]:
    """Run (or continue) the configured schedule; returns a summary (``exit_code`` set)."""
    options = options or RunOptions(resume=resume, progress=progress)
    with locked(Path(run_dir), enabled=int(os.environ.get("RANK", "0")) == 0):
        run = setup(config, Path(run_dir), options)
        stop = run.schedule.total_steps if max_steps is None else max_steps
        logs = open_logs(run)
        signals = StopRequest().install()
        try:
            signum = loop(run, logs, min(stop, run.schedule.total_steps), signals)
        finally:
            signals.restore()
        summary = finish(run, logs, signum)
        _shutdown()
    return summary


def loop(run: Run, logs: Logs, stop: int, signals: StopRequest) -> int:
    """Steps until ``stop`` (or a stop signal: returns its number, else 0)."""
    state, schedule = run.state, run.schedule
    if state.step == 0:
        run_evaluation(run, logs, -1, "initial")  # the initial model: b[j]
    bar, pipeline = progress_bar(run, stop), input_pipeline(run)
    try:
        while state.step < stop:
            step, started = state.step, time.perf_counter()
            stage_index = schedule.stage_at(step)
            stage = schedule.stages[stage_index]
            consumed = state.consumed.get(str(stage_index), {})
            task = sample_task(stage, consumed, step, run.config.schedule.seed)
            result = train_step(run, task, stage, step, signals.signum, pipeline)
            seconds = time.perf_counter() - started
            record_step(run, stage_index, result, seconds)
            if log_due(run, result, stop):
                log_step(run, logs, step_row(run, stage_index, result, seconds))
                bar.set_postfix(
                    stage=stage_index, task=task, loss=f"{sum(result.losses.values()):.3f}"
                )
            check_streak(run)
            fault_point("after_step", state.step)
            bar.update(1)
            after_step(run, logs, stage_index, stop, result.stop)
            if result.stop:
                return signals.signum or signal.SIGTERM
        return 0
    finally:
        bar.close()
        pipeline.close()


def input_pipeline(run: Run) -> InputPipeline:
    """Micro-batches built ahead in a background thread (``train.prefetch`` per task)."""
    return InputPipeline(run.streams, partial(build_micro_batch, run), run.config.train.prefetch)


def log_due(run: Run, result: StepResult, stop: int) -> bool:
    """Whether the step just taken gets a metrics.jsonl row, W&B point and bar update:
    every ``train.log_every`` steps, the last step, a skipped step, a stop, telemetry steps."""
    step, train = run.state.step, run.config.train
    telemetry = train.grad_telemetry_every and step % train.grad_telemetry_every == 0
    return bool(
        step % train.log_every == 0 or step == stop or result.stop or not result.finite or telemetry
    )


def finish(run: Run, logs: Logs, signum: int = 0) -> dict[str, Any]:
    """Export a completed run (rank 0), close the logs; returns the run's summary."""
    state, schedule = run.state, run.schedule
    summary: dict[str, Any] = {
        "steps": state.step,
        "total_steps": schedule.total_steps,
        "tokens": state.tokens,
        "elapsed_s": round(state.elapsed, 2),
        "nonfinite_steps": state.nonfinite_steps,
        "exit_code": StopRequest.exit_code(signum) if signum else 0,
    }
    if signum:
        summary["stopped_by"] = signal.Signals(signum).name
    if run.rank == 0 and state.step == schedule.total_steps:
        from ernie_cpt.export import export_run

        # the run's own export, re-made when a finished run is resumed (a non-export refused)
        export_run(run.run_dir, run.run_dir / "export", overwrite=True)
        summary["export"] = str(run.run_dir / "export")
    logs.close()
    return summary


def _shutdown() -> None:
    """Barrier + destroy: avoids rare aborts at exit seen with several ZeRO-3 processes."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
