"""Schedule comparison: every schedule x seed trained at matched compute, then analysed.

``ernie-cpt compare CONFIG --schedules continual,multitask,cmtl --seeds K --output-dir DIR``
trains one run per (schedule, seed) as a subprocess (``python -m ernie_cpt.cli train``: one
DeepSpeed process group per process), on the same data (``data.*`` untouched) and with the
same seeds for every schedule: seed index ``s`` sets ``train.seed`` and ``schedule.seed`` to
the config's values + ``s``, so the same ``s`` gives every schedule the same initial weights.
Built-in schedules all train ``schedule.iterations_per_task`` steps per task, so their total
steps match (T * N); the plan prints each schedule's steps and warns when they differ.

Layout of DIR::

    comparison.json            the plan: config, schedules, seeds, W&B group, runs
    config.yaml                the resolved base config every run starts from
    runs/<schedule>-seed<s>/   a normal run directory (metrics.jsonl, eval.jsonl, export/ ...)
        train.log              the training subprocess's output (appended per attempt)
        compare_attempts.jsonl one row per finished attempt: seconds, return code
        compare_done.json      written after the subprocess exited 0 with an export: finished
        downstream/*.json      cached downstream evaluations (final model; with
                               --downstream-stages also each stage's end checkpoint,
                               exported to stage_exports/stage<k>/)
    report.md, summary.json, plots/*.png, wandb/   (see ``ernie_cpt.experiments.report``)

Resuming: running the same command again skips finished runs (their ``compare_done.json``)
and resumes unfinished ones with ``--resume auto`` from their newest valid checkpoint. The
plan (resolved config, schedules, seeds, group) must match the saved one, otherwise the
command refuses and names what differs; the one change accepted is a plan that only adds
runs (``--seeds`` raised, ``--baseline`` added): the finished runs are kept and only the new
ones train. Downstream files and settings, ``--metric`` and
W&B logging are not part of the plan: they may change between invocations (downstream
results are cached per file content, settings and model). A failed run stops the comparison (exit 1, the tail
of its log printed); a training subprocess dies with the harness (``PR_SET_PDEATHSIG``), and
a lock file refuses a second harness on the same directory.

Baseline: ``--baseline mlm`` adds per seed a run ``mlm-only-seed<s>`` that trains only that
task (its options from the config) in one stage for as many steps as the schedules, with the
same seeds and data settings; its held-out score and downstream results are the report's
baseline row.

Speed: ``--threads N`` sets ``OMP_NUM_THREADS`` of the training runs; on a small, shared
CPU 1 thread trained the demo model several times faster than the default (OpenMP threads
waiting on each other).

Analysis (``collect_run``): ``eval.jsonl`` gives the initial evaluation (b) and one after
every stage: the score matrix R with the held-out ``metric`` of every task (``accuracy`` by
default; for ``loss``/``perplexity`` the negative, so higher is better) and the forgetting
metrics of ``ernie_cpt.experiments.forgetting``, with each task's introduction stage read from the
schedule the run trained.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ernie_cpt.config import ConfigError, RunConfig, diff_configs, load_config, save_config
from ernie_cpt.experiments.architecture import run_architecture
from ernie_cpt.experiments.forgetting import (
    LOWER_IS_BETTER,
    forgetting_metrics,
    introduction_stages,
    score_matrix,
)
from ernie_cpt.training import checkpoint as ckpt
from ernie_cpt.training.run_log import read_jsonl

PLAN_FILE = "comparison.json"
DONE_FILE = "compare_done.json"
ATTEMPTS_FILE = "compare_attempts.jsonl"
LOCK_FILE = ".compare.lock"
PLAN_KEYS = ("config", "schedules", "seeds", "group", "runs", "sharing")

Echo = Callable[[str], None]


def echo_stderr(message: str) -> None:
    """Progress lines go to stderr (stdout stays machine-readable)."""
    print(f"[compare] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RunSpec:
    """One training run of the comparison."""

    schedule: str
    seed: int
    train_seed: int
    schedule_seed: int
    total_steps: int | None
    # sharing.kind of this run ("" = the config's own, no override: plain schedule grids).
    sharing: str = ""
    # A baseline run (``--baseline mlm``): the one task it trains alone, at equal steps.
    baseline: str = ""
    # Further ``--set`` overrides of this run (a baseline's task list and budget).
    extra: tuple[str, ...] = ()

    @property
    def variant(self) -> str:
        """What the run compares: its schedule, ``schedule+sharing`` in a sharing grid, or
        ``<task>-only`` for a baseline."""
        if self.baseline:
            return f"{self.baseline}-only"
        return f"{self.schedule}+{self.sharing}" if self.sharing else self.schedule

    @property
    def name(self) -> str:
        """Directory name under ``runs/``."""
        return f"{self.variant.replace('+', '-')}-seed{self.seed}"

    def overrides(self, group: str) -> list[str]:
        """``--set`` overrides that turn the base config into this run's config."""
        quoted = json.dumps  # a JSON string is a YAML string: safe for any name
        return (
            [
                f"schedule.kind={self.schedule}",
                f"train.seed={self.train_seed}",
                f"schedule.seed={self.schedule_seed}",
                f"logging.group={quoted(group)}",
                f"logging.job_type={quoted(self.variant)}",
                f"logging.run_name={quoted(f'{group}/{self.name}')}",
            ]
            + ([f"sharing.kind={self.sharing}"] if self.sharing else [])
            + list(self.extra)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form (in ``comparison.json``)."""
        return (
            {
                "name": self.name,
                "schedule": self.schedule,
                "seed": self.seed,
                "train_seed": self.train_seed,
                "schedule_seed": self.schedule_seed,
                "total_steps": self.total_steps,
            }
            | ({"sharing": self.sharing} if self.sharing else {})
            | ({"baseline": self.baseline, "overrides": list(self.extra)} if self.baseline else {})
        )


# ------------------------------------------------------------------------------------ plan
def parse_schedules(text: str | Sequence[str]) -> list[str]:
    """``"continual,cmtl"`` -> known schedule kinds (did-you-mean on unknown ones)."""
    from schedules import SCHEDULE_KINDS
    from schedules.validation import did_you_mean

    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text)]
    names = [s for s in names if s]
    if not names:
        raise ConfigError("--schedules needs at least one schedule kind")
    for name in names:
        if name not in SCHEDULE_KINDS:
            raise ConfigError(
                f"unknown schedule kind {name!r}{did_you_mean(name, SCHEDULE_KINDS)}; "
                f"known: {', '.join(SCHEDULE_KINDS)}"
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"--schedules lists a kind twice: {names}")
    return names


def parse_sharing(text: str | Sequence[str]) -> list[str]:
    """``--sharing hard,mmoe,ple`` -> known sharing kinds, each once (empty: no grid)."""
    from ernie_cpt.config import SHARING_KINDS
    from schedules.options import did_you_mean

    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    for name in names:
        if name not in SHARING_KINDS:
            raise ConfigError(
                f"--sharing: unknown kind {name!r}{did_you_mean(name, SHARING_KINDS)}; "
                f"known: {', '.join(SHARING_KINDS)}"
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"--sharing lists a kind twice: {names}")
    return names


def schedule_steps(config: RunConfig, kind: str) -> int | None:
    """Total optimizer steps of ``kind`` under ``config`` (None if it cannot be built)."""
    from schedules import build_schedule

    s = config.schedule
    try:
        return build_schedule(kind, list(config.tasks), s.iterations_per_task, s.stages).total_steps
    except (ValueError, TypeError) as error:
        raise ConfigError(f"schedule {kind!r} cannot be built from this config: {error}") from error


def make_plan(
    config: RunConfig,
    schedules: Sequence[str],
    seeds: int,
    group: str | None,
    out_dir: Path,
    sharing: Sequence[str] = (),
    baseline: str = "",
) -> dict[str, Any]:
    """The comparison plan: every (seed, schedule[, sharing kind]) run, seed-major (all
    schedules of seed 0 first, so a partial comparison already compares every schedule);
    ``baseline`` (a task name) adds per seed a run training only that task for as many
    steps as the longest schedule."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    steps = {kind: schedule_steps(config, kind) for kind in schedules}
    longest = max(n or 0 for n in steps.values())
    extra = baseline_overrides(config, baseline, longest)
    runs = []
    for s in range(seeds):
        train_seed, schedule_seed = config.train.seed + s, config.schedule.seed + s
        runs += [
            RunSpec(kind, s, train_seed, schedule_seed, steps[kind], share)
            for kind in schedules
            for share in (sharing or [""])
        ]
        if baseline:
            runs.append(
                RunSpec("continual", s, train_seed, schedule_seed, longest, "", baseline, extra)
            )
    where = str(out_dir.resolve())  # two identical comparisons get distinct groups
    parts = [config.to_dict(), list(schedules), seeds, where] + ([list(sharing)] if sharing else [])
    parts += [baseline] if baseline else []
    identity = json.dumps(parts, sort_keys=True, default=str)
    default_group = f"{out_dir.resolve().name}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"
    return {
        "version": 1,
        "config": config.to_dict(),
        "schedules": list(schedules),
        "seeds": seeds,
        "group": group or default_group,
        "runs": [r.to_dict() for r in runs],
    } | ({"sharing": list(sharing)} if sharing else {})


def baseline_overrides(config: RunConfig, task: str, steps: int) -> tuple[str, ...]:
    """``--set`` overrides that train only ``task`` (its options kept) for ``steps`` steps in
    one stage; checked now, so a bad name fails before any training."""
    if not task:
        return ()
    from ernie_cpt.config import apply_overrides, config_from_dict
    from pretrain_tasks import get_task_class

    try:
        get_task_class(task)
    except ValueError as error:  # an unknown name, with "did you mean"
        raise ConfigError(f"--baseline: {error}") from error
    options = dict(config.tasks.get(task, {}))
    extra = [f"tasks={json.dumps({task: options})}", f"schedule.iterations_per_task={steps}"]
    if config.schedule.stages:
        extra.append("schedule.stages=null")  # custom stages name the other tasks
    tree = apply_overrides(config.to_dict(), ["schedule.kind=continual", *extra])
    config_from_dict(tree)  # bad options fail here
    return tuple(extra)


def plan_runs(plan: dict[str, Any]) -> list[RunSpec]:
    """The RunSpecs of a plan."""
    return [
        RunSpec(
            r["schedule"],
            r["seed"],
            r["train_seed"],
            r["schedule_seed"],
            r["total_steps"],
            r.get("sharing", ""),
            r.get("baseline", ""),
            tuple(r.get("overrides", ())),
        )
        for r in plan["runs"]
    ]


def plan_differences(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between a saved plan and a new one (empty: the same comparison)."""
    out = [f"config.{k}" for k in diff_configs(saved["config"], new["config"])]
    out += [key for key in PLAN_KEYS if key != "config" and saved.get(key) != new.get(key)]
    return out


def extends(saved: dict[str, Any], new: dict[str, Any], differing: Sequence[str]) -> bool:
    """True when ``new`` only adds runs to ``saved`` (more seeds, a baseline): every saved run
    is in the new plan unchanged, so the finished ones are kept and only the added ones train."""
    if not set(differing) <= {"runs", "seeds"}:
        return False
    added = [run for run in new["runs"] if run not in saved["runs"]]
    return all(run in new["runs"] for run in saved["runs"]) and bool(added)


def open_plan(
    out_dir: Path, plan: dict[str, Any], extra: dict[str, Any], group_given: bool = True
) -> dict[str, Any]:
    """Write a new plan, or check the saved one matches; returns the plan in force.

    Without an explicit ``--group`` the saved group is kept (the default one is derived
    from the directory name, which may have changed since)."""
    path = out_dir / PLAN_FILE
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not group_given:
            plan = {**plan, "group": saved.get("group")}
        differing = plan_differences(saved, plan)
        if differing and extends(saved, plan, differing):
            ckpt.atomic_write_text(path, json.dumps({**saved, **plan}, indent=2, default=str))
            return {**saved, **plan}
        if differing:
            raise ConfigError(
                f"{out_dir} holds a different comparison (differs in: {', '.join(differing)}); "
                "use a new --output-dir, or the same config, overrides, schedules and seeds"
            )
        return saved
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_text(path, json.dumps({**plan, **extra}, indent=2, default=str))
    return plan


@contextlib.contextmanager
def comparison_lock(out_dir: Path) -> Iterator[None]:
    """Refuse a second harness on the same directory (an advisory ``flock``)."""
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / LOCK_FILE).open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise ConfigError(f"{out_dir}: another compare is running on it") from error
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------ running
def is_finished(run_dir: Path) -> bool:
    """A run is finished once the harness wrote its done marker (export present)."""
    return (run_dir / DONE_FILE).exists() and (run_dir / "export" / "config.json").exists()


def steps_done(run_dir: Path) -> int:
    """Steps in ``metrics.jsonl`` so far (cheap: the last complete row)."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return rows[-1]["step"] if rows else 0


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGTERM the training subprocess when the harness dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def child_env(threads: int | None = None) -> dict[str, str]:
    """The harness's environment, offline by default, without launcher rank variables or a
    W&B service address (each run owns its wandb service);
    ``threads`` sets ``OMP_NUM_THREADS`` (1 is several times faster for tiny models on a
    busy CPU, where OpenMP threads wait on each other)."""
    dropped = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_", "WANDB_SERVICE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.setdefault(var, "1")
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def train_command(config_file: Path, run_dir: Path, overrides: Sequence[str]) -> list[str]:
    """``python -m ernie_cpt.cli train ... --resume auto`` for one run."""
    command = [sys.executable, "-m", "ernie_cpt.cli", "train", str(config_file)]
    command += ["--output-dir", str(run_dir), "--resume", "auto"]
    for override in overrides:
        command += ["--set", override]
    return command


def run_training(
    command: Sequence[str],
    run_dir: Path,
    label: str,
    total_steps: int | None,
    echo: Echo,
    interval: float = 15.0,
    threads: int | None = None,
) -> int:
    """Run one training subprocess (output to ``train.log``), echoing its step now and then."""
    run_dir.mkdir(parents=True, exist_ok=True)
    started, last = time.perf_counter(), -1
    with (run_dir / "train.log").open("a", encoding="utf-8") as log:
        log.write(f"\n=== {datetime.now(timezone.utc).isoformat()} {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(threads),
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            start_new_session=True,  # a terminal's Ctrl-C reaches it once, forwarded by us
        )
        with forwarding_signals(process) as received:
            try:
                while True:
                    try:
                        code = process.wait(timeout=interval)
                        break
                    except subprocess.TimeoutExpired:
                        step = steps_done(run_dir)
                        if step != last:
                            echo(f"{label}: step {step}/{total_steps or '?'}")
                            last = step
            except BaseException:
                process.terminate()
                process.wait()
                raise
    seconds = time.perf_counter() - started
    row = {"finished": datetime.now(timezone.utc).isoformat(), "seconds": seconds, "rc": code}
    with (run_dir / ATTEMPTS_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    if received:  # the run checkpointed and stopped: so does the comparison (resumable)
        raise SystemExit(128 + received[0])
    return code


@contextlib.contextmanager
def forwarding_signals(process: subprocess.Popen) -> Iterator[list[int]]:
    """Pass SIGTERM/SIGINT to the training child, which checkpoints and exits; yields the
    signals received (main thread only: elsewhere nothing is installed)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def resume_note(run_dir: Path) -> str:
    """``, resuming from step-...`` when an earlier attempt left checkpoints."""
    found = ckpt.candidates(run_dir / "checkpoints")
    if found:
        return f", resuming from {found[0].name} (if valid)"
    return ", restarting (no checkpoint yet)" if steps_done(run_dir) else ""


def log_tail(run_dir: Path, lines: int = 30) -> str:
    """The last lines of a run's ``train.log``."""
    path = run_dir / "train.log"
    if not path.exists():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def mark_done(run_dir: Path, spec: RunSpec) -> dict[str, Any]:
    """Write the done marker: steps, tokens, time and the stages the run trained."""
    found = ckpt.newest_valid(run_dir / "checkpoints")
    if found is None:
        raise ValueError(f"{run_dir}: training exited 0 but left no valid checkpoint")
    state = ckpt.read_state(found)
    train_state = state["train_state"]
    attempts = read_jsonl(run_dir / ATTEMPTS_FILE)
    done = {
        **spec.to_dict(),
        "finished": datetime.now(timezone.utc).isoformat(),
        "steps": train_state["step"],
        "tokens": train_state["tokens"],
        "train_s": train_state["elapsed"],
        "wall_s": sum(a["seconds"] for a in attempts),
        "attempts": len(attempts),
        "stage_tasks": [
            [t for t, n in stage["budgets"].items() if n > 0]
            for stage in state["schedule"]["stages"]
        ],
        "stage_names": [stage["name"] for stage in state["schedule"]["stages"]],
        "task_ids": train_state["task_ids"],
    }
    ckpt.atomic_write_text(run_dir / DONE_FILE, json.dumps(done, indent=2))
    return done


def train_all(
    out_dir: Path,
    plan: dict[str, Any],
    config_file: Path,
    echo: Echo,
    interval: float = 15.0,
    threads: int | None = None,
) -> None:
    """Train every unfinished run of the plan in order; stop at the first failure."""
    runs = plan_runs(plan)
    for number, spec in enumerate(runs, start=1):
        run_dir = out_dir / "runs" / spec.name
        what = spec.variant if spec.baseline else spec.schedule
        label = f"run {number}/{len(runs)}: {what} seed {spec.seed}"
        if is_finished(run_dir):
            echo(f"{label}: finished before, skipped")
            continue
        echo(
            f"{label} ({spec.total_steps} steps, train.seed={spec.train_seed}, "
            f"schedule.seed={spec.schedule_seed}){resume_note(run_dir)}"
        )
        command = train_command(config_file, run_dir, spec.overrides(plan["group"]))
        code = run_training(command, run_dir, label, spec.total_steps, echo, interval, threads)
        if code != 0 or not (run_dir / "export" / "config.json").exists():
            raise RunFailed(
                f"{label} failed (exit {code}); rerun the same command to resume it. "
                f"Tail of {run_dir / 'train.log'}:\n{log_tail(run_dir)}"
            )
        done = mark_done(run_dir, spec)
        echo(
            f"{label}: done, {done['steps']} steps, {done['tokens']} tokens, {done['wall_s']:.1f} s"
        )


class RunFailed(RuntimeError):
    """A training subprocess of the comparison failed."""


# ----------------------------------------------------------------------------- analysis
def stage_evaluations(rows: Sequence[dict[str, Any]], stages: int) -> list[dict[str, Any]]:
    """[initial, after stage 0, ..., after stage S-1] rows of ``eval.jsonl`` (the last of each)."""
    by_stage: dict[int, dict[str, Any]] = {}
    for row in rows:
        if -1 <= row["stage"] < stages:
            if row["stage"] not in by_stage or row["step"] >= by_stage[row["stage"]]["step"]:
                by_stage[row["stage"]] = row
    missing = [s for s in range(-1, stages) if s not in by_stage]
    if missing:
        raise ValueError(
            f"eval.jsonl has no evaluation for stage(s) {missing} (-1 = initial model); "
            "train.eval_batches must be > 0"
        )
    return [by_stage[s] for s in range(-1, stages)]


def metric_value(metrics: dict[str, float], metric: str) -> float:
    """One task's score: higher is better (loss-like metrics are negated)."""
    value = metrics.get(metric, math.nan)
    return -value if metric in LOWER_IS_BETTER else value


def collect_run(run_dir: Path, tasks: Sequence[str], metric: str = "accuracy") -> dict[str, Any]:
    """R matrix, forgetting metrics, tokens and times of a finished run, and each task's
    chance level from its ``data_report.json`` (a baseline run: its one task only)."""
    from ernie_cpt.experiments.statistics import chance_levels

    done = json.loads((run_dir / DONE_FILE).read_text(encoding="utf-8"))
    tasks = [done["baseline"]] if done.get("baseline") else tasks
    stage_tasks = done["stage_tasks"]
    evals = stage_evaluations(read_jsonl(run_dir / "eval.jsonl"), len(stage_tasks))
    scored = [
        {task: {metric: metric_value(m, metric)} for task, m in row["metrics"].items()}
        for row in evals
    ]
    matrix = score_matrix(scored, tasks, metric)
    intro = introduction_stages(stage_tasks, tasks)
    return {
        **{
            k: done[k] for k in ("name", "schedule", "seed", "steps", "tokens", "train_s", "wall_s")
        },
        "sharing": done.get("sharing", ""),
        "variant": RunSpec(
            done["schedule"], 0, 0, 0, None, done.get("sharing", ""), done.get("baseline", "")
        ).variant,
        "baseline": done.get("baseline", ""),
        "architecture": run_architecture(run_dir),
        "attempts": done["attempts"],
        "stage_names": done["stage_names"],
        "stage_tasks": stage_tasks,
        "stage_steps": [row["step"] for row in evals],
        "intro": intro,
        "tasks": list(tasks),  # R's columns
        "R": matrix,
        "metrics": forgetting_metrics(matrix, intro),
        "chance": chance_levels(read_json(run_dir / "data_report.json"), tasks, metric),
    }


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing (older runs)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


# -------------------------------------------------------------------------------- entry
@dataclass(frozen=True)
class DownstreamPlan:
    """Downstream fine-tuning of every final model (and, with ``stages``, of each stage's):
    ``files`` are ``--data`` values of ``ernie-cpt finetune`` (labelled files, GLUE folders or
    roots, ``NAME=`` prefixes); ``multitask`` (an ``mtdnn.MultitaskConfig``) fine-tunes them
    jointly, MT-DNN style; None fine-tunes each task alone."""

    files: tuple[str, ...]
    seeds: int = 5
    task_type: str = "auto"
    finetune: Any = None  # a finetune.FinetuneConfig (None: its defaults)
    stages: bool = False
    multitask: Any = None

    def finetune_config(self) -> Any:
        """The fine-tuning settings in force."""
        from ernie_cpt.experiments.finetune import FinetuneConfig

        return self.finetune or FinetuneConfig()

    def multitask_config(self) -> Any:
        """MT-DNN settings (``multitask=False``: each task alone)."""
        from ernie_cpt.experiments.mtdnn import MultitaskConfig

        return self.multitask or MultitaskConfig(multitask=False)

    def tasks(self) -> list[Any]:
        """The downstream tasks of ``files`` (read once per comparison)."""
        from ernie_cpt.experiments.glue import resolve_all

        config = self.finetune_config()
        return resolve_all(
            self.files,
            task_type=self.task_type,
            dev_fraction=config.dev_fraction,
            split_seed=config.split_seed,
        )


def stage_models(run_dir: Path, echo: Echo) -> dict[str, Path]:
    """{``stage<k>``: an export of the checkpoint taken at the end of stage k} for every stage
    before the last whose checkpoint is still on disk (older ones are pruned unless
    ``train.keep_checkpoints`` is raised). Exports are written once, under ``stage_exports/``."""
    from ernie_cpt.export import export_run

    done = json.loads((run_dir / DONE_FILE).read_text(encoding="utf-8"))
    stages = len(done["stage_tasks"])
    ends = [row["step"] for row in stage_evaluations(read_jsonl(run_dir / "eval.jsonl"), stages)]
    models = {}
    for stage, step in enumerate(ends[1:-1], start=1):
        out = run_dir / "stage_exports" / f"stage{stage}"
        checkpoint = run_dir / "checkpoints" / ckpt.tag_for(step)
        if not (out / "config.json").exists():
            if not checkpoint.is_dir():
                echo(
                    f"{run_dir.name}: checkpoint of stage {stage} (step {step}) was pruned; "
                    "raise train.keep_checkpoints to evaluate every stage"
                )
                continue
            export_run(run_dir, out, checkpoint)
        models[f"stage{stage}"] = out
    return models


def downstream_models(run_dir: Path, downstream: DownstreamPlan, echo: Echo) -> dict[str, Path]:
    """{label: model dir}: the final export, plus each stage's when ``downstream.stages``."""
    models = stage_models(run_dir, echo) if downstream.stages else {}
    return {**models, "final": run_dir / "export"}


def downstream_all(
    out_dir: Path, plan: dict[str, Any], downstream: DownstreamPlan, echo: Echo
) -> None:
    """Fine-tune every finished run's model(s) on the downstream tasks (cached per run)."""
    from ernie_cpt.experiments.mtdnn import finetune_tasks

    tasks = downstream.tasks()
    names = ", ".join(t.name for t in tasks)
    for spec in plan_runs(plan):
        run_dir = out_dir / "runs" / spec.name
        for label, model in downstream_models(run_dir, downstream, echo).items():
            path = downstream_result_path(run_dir, downstream, label)
            if path.exists():
                continue
            what = f"downstream {names} on {spec.name} ({label})"
            echo(f"{what}: {downstream.seeds} seeds")
            result = finetune_tasks(
                model,
                tasks,
                seeds=downstream.seeds,
                config=downstream.finetune_config(),
                mt=downstream.multitask_config(),
                progress=False,
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(path, json.dumps(json_safe_tree(result), indent=2))
            medians = ", ".join(f"{k} {v['median']:.4f}" for k, v in result["tasks"].items())
            echo(f"{what}: medians {medians}")


def json_safe_tree(tree: Any) -> Any:
    """NaN -> None (strict JSON), as the report writes it."""
    from ernie_cpt.experiments.report import json_safe

    return json_safe(tree)


def data_digest(specs: Sequence[str]) -> str:
    """Content hash of ``--data`` values: file bytes, every file of a folder, or a hub name."""
    from ernie_cpt.experiments.glue import parse_spec

    digest = hashlib.sha256()
    for spec in specs:
        name, where = parse_spec(spec)
        digest.update(f"{name}\0{where}\0".encode())
        path = Path(where)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.exists():
                digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
                digest.update(file.read_bytes())
    return digest.hexdigest()


def downstream_result_path(run_dir: Path, downstream: DownstreamPlan, label: str = "final") -> Path:
    """Cache file of one model's fine-tuning on every task, keyed by the data's content, the
    settings and the time the run finished (a retrained model gets new evaluations)."""
    from dataclasses import asdict

    trained = json.loads((run_dir / DONE_FILE).read_text(encoding="utf-8"))["finished"]
    settings = [downstream.seeds, downstream.task_type, asdict(downstream.finetune_config())]
    settings.append(asdict(downstream.multitask_config()))
    digest = hashlib.sha256(data_digest(downstream.files).encode())
    digest.update(json.dumps([*settings, trained], sort_keys=True).encode())
    return run_dir / "downstream" / f"{label}-{digest.hexdigest()[:12]}.json"


def load_downstream(
    run_dir: Path, downstream: DownstreamPlan | None
) -> dict[str, dict[str, dict[str, Any]]]:
    """{label ("final", "stage1", ...): {task name: its medians and seed scores}} computed."""
    if downstream is None or not downstream.files:
        return {}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    labels = [p.name for p in sorted((run_dir / "stage_exports").glob("stage*"))]
    for label in [*labels, "final"] if downstream.stages else ["final"]:
        path = downstream_result_path(run_dir, downstream, label)
        if path.exists():
            out[label] = json.loads(path.read_text(encoding="utf-8"))["tasks"]
    return out


def compare(
    config_path: str | Path,
    overrides: Sequence[str],
    schedules: Sequence[str],
    seeds: int,
    out_dir: Path,
    *,
    group: str | None = None,
    metric: str = "accuracy",
    downstream: DownstreamPlan | None = None,
    wandb_summary: bool = True,
    echo: Echo = echo_stderr,
    interval: float = 15.0,
    threads: int | None = None,
    sharing: Sequence[str] = (),
    baseline: str = "",
) -> dict[str, Any]:
    """Plan, train (resuming), evaluate downstream, analyse and report; returns the summary.

    ``sharing``: sharing kinds crossed with the schedules (each run sets ``sharing.kind``);
    ``baseline``: a task trained alone per seed at equal steps (``--baseline mlm``)."""
    from ernie_cpt.experiments.report import build_summary, log_wandb_summary, write_report

    out_dir = Path(out_dir)
    config = load_config(config_path, overrides)
    plan = make_plan(config, schedules, seeds, group, out_dir, sharing, baseline)
    with comparison_lock(out_dir):
        extra = {"config_path": str(config_path), "overrides": list(overrides)}
        plan = open_plan(out_dir, plan, extra, group_given=group is not None)
        config_file = out_dir / "config.yaml"
        if not config_file.exists():
            save_config(config, config_file)
        announce(plan, echo)
        train_all(out_dir, plan, config_file, echo, interval, threads)
        if downstream is not None and downstream.files:
            downstream_all(out_dir, plan, downstream, echo)
        tasks = list(plan["config"]["tasks"])
        runs = collect_all(out_dir, plan, tasks, metric, downstream, echo)
        summary = build_summary(plan, runs, tasks, metric)
        write_report(out_dir, summary)
        if wandb_summary and plan["config"]["logging"]["wandb_mode"] != "disabled":
            log_wandb_summary(out_dir, summary, plan)
        echo(f"report: {out_dir / 'report.md'}")
    return summary


def collect_all(
    out_dir: Path,
    plan: dict[str, Any],
    tasks: Sequence[str],
    metric: str,
    downstream: DownstreamPlan | None,
    echo: Echo,
) -> list[dict[str, Any]]:
    """``collect_run`` of every run, with its downstream results; warns about tasks that
    have no held-out ``metric`` (their R column is NaN)."""
    runs = []
    for spec in plan_runs(plan):
        run_dir = out_dir / "runs" / spec.name
        run = collect_run(run_dir, tasks, metric)
        evaluations = load_downstream(run_dir, downstream)
        run["downstream"] = evaluations.pop("final", {})
        run["downstream_stages"] = evaluations
        runs.append(run)
    scheduled = [run for run in runs if not run["baseline"]]  # a baseline has its own columns
    for j, task in enumerate(tasks):
        if all(math.isnan(row[j]) for run in scheduled for row in run["R"]):
            echo(f"warning: task {task!r} has no held-out {metric!r}: its scores are n/a")
    return runs


def announce(plan: dict[str, Any], echo: Echo) -> None:
    """Print the plan: runs, steps per schedule, and a warning if compute is not matched."""
    steps = {
        f"{r['baseline']}-only" if r.get("baseline") else r["schedule"]: r["total_steps"]
        for r in plan["runs"]
    }
    grid = f" x sharing {', '.join(plan['sharing'])}" if plan.get("sharing") else ""
    echo(
        f"{len(plan['runs'])} runs ({', '.join(plan['schedules'])}{grid} x {plan['seeds']} seeds), "
        f"W&B group {plan['group']!r}; steps per run: "
        + ", ".join(f"{k} {v}" for k, v in steps.items())
    )
    if len(set(steps.values())) > 1:
        echo("warning: the schedules do not train the same number of steps (compute not matched)")
