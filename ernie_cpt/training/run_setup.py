"""Assembling a run: process group, data, schedule, model, engine and (restored) state.

``setup`` does the work in the order that fails fastest: the checkpoint to resume is found
before any data is prepared, and the config is checked against it before the engine exists.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ernie_cpt.config import RunConfig, save_config
from ernie_cpt.data.prepare import PreparedData, prepare_data
from ernie_cpt.data.task_stream import TaskStream
from ernie_cpt.training import checkpoint as ckpt
from ernie_cpt.training import resume
from ernie_cpt.training.build import build_module, build_schedule_for, build_streams
from ernie_cpt.training.engine import build_engine, init_distributed
from ernie_cpt.training.run_dir import choose_checkpoint
from ernie_cpt.training.step import sparse_top
from ernie_cpt.training.train_module import describe
from ernie_cpt.validate import require_config
from pretrain_tasks.base import stable_seed
from schedules import Schedule

log = logging.getLogger(__name__)


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
    nonfinite_steps: int = 0  # steps skipped for a NaN/inf loss or gradient norm, in all
    nonfinite_streak: int = 0  # ... and in a row up to now

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
    trust_checkpoint: bool = False


@dataclass(frozen=True)
class RunOptions:
    """How ``train`` was asked to treat the run directory and its checkpoints."""

    resume: str = "auto"  # auto | must | never
    overwrite: bool = False  # move an existing run aside and start a new one
    trust_checkpoint: bool = False  # unpickle checkpoint files (old runs you made yourself)
    progress: bool = True


def seed_everything(seed: int, rank: int) -> None:
    """Seed torch (the model's initialisation) and python's and numpy's global RNGs (per rank)."""
    torch.manual_seed(stable_seed(seed, "init") % 2**63)
    random.seed(stable_seed(seed, "python", rank))
    np.random.seed(stable_seed(seed, "numpy", rank) % 2**32)


def find_checkpoint(run_dir: Path, options: RunOptions, rank: int) -> Path | None:
    """Rank 0 applies the run-directory rules; every rank then reads its decision."""
    import torch.distributed as dist

    decision: list[Any] = [None]
    if rank == 0:
        found = choose_checkpoint(run_dir, options.resume, options.overwrite)
        decision = [str(found) if found else ""]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(decision, src=0)
    return Path(decision[0]) if decision[0] else None


def setup(config: RunConfig, run_dir: Path, options: RunOptions) -> Run:
    """Process group, data, model, engine and (possibly restored) state."""
    # ``ernie-cpt check``: every problem at once, before any data is prepared
    require_config(config, run_dir, resume=options.resume, overwrite=options.overwrite)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    rank, world_size = init_distributed()
    seed_everything(config.train.seed, rank)
    run_dir.mkdir(parents=True, exist_ok=True)
    # before any expensive work: --resume must fails fast
    found = find_checkpoint(run_dir, options, rank)
    data = _prepare_on_rank_zero(config, rank, options.progress)
    config = without_dropped_tasks(config, data)
    schedule = build_schedule_for(config, {name: len(ds) for name, ds in data.train.items()})
    saved = ckpt.read_state(found) if found is not None else None
    added = resume.added_tasks(saved, config) if saved else []
    if saved:
        resume.check_world_size(saved, world_size)
        resume.check_compatible(saved, config, data, added)
    task_ids = dict(saved["train_state"]["task_ids"]) if saved else {}
    for name in schedule.tasks:  # a task keeps its id for life; new tasks get the next ones
        task_ids.setdefault(name, len(task_ids))
    module = build_module(config, data, list(config.tasks), schedule, max(task_ids.values()) + 1)
    engine = build_engine(
        module, config.train, schedule.total_steps, world_size, options.trust_checkpoint
    )
    streams = build_streams(config, data, rank, world_size)
    run = Run(config, run_dir, rank, world_size, data, schedule, engine, streams, TrainState())
    run.trust_checkpoint = options.trust_checkpoint
    run.state = TrainState(task_ids=task_ids, run_id=uuid.uuid4().hex[:12])
    if saved:
        restore(run, saved, found, added)
    if rank == 0:
        write_run_files(run)
    return run


def without_dropped_tasks(config: RunConfig, data: PreparedData) -> RunConfig:
    """The config less the tasks preparation dropped (``data.on_empty_task: skip``), so the
    schedule, the model and the saved config.yaml name only the tasks that train."""
    dropped = [name for name in config.tasks if name not in data.tasks]
    if not dropped:
        return config
    log.warning("training without %s (no examples; data.on_empty_task: skip)", dropped)
    kept = {name: options for name, options in config.tasks.items() if name in data.tasks}
    return dataclasses.replace(config, tasks=kept)


def restore(run: Run, saved: Mapping[str, Any], found: Path, added: list[str]) -> None:
    """Load engine, trainer state, data cursors and this rank's RNGs from checkpoint ``found``."""
    if added:
        resume.check_schedule_prefix(
            Schedule.from_dict(saved["schedule"]), run.schedule, saved["train_state"]["step"]
        )
        resume.load_with_added_tasks(
            run.config, run.data, saved, found, run.engine, run.trust_checkpoint
        )
        log.info("added tasks %s to the run", added)
    else:
        run.engine.load_checkpoint(str(found.parent), tag=found.name)
    task_ids = run.state.task_ids
    run.state = TrainState(**saved["train_state"])
    run.state.task_ids = task_ids
    for name, stream in run.streams.items():
        stream.load_state(run.state.cursors.get(name, stream.state()))
    ckpt.set_rng_state(ckpt.load_rng(found, run.rank))
    log.info("resumed from %s at step %d (run %s)", found, run.state.step, run.state.run_id)


def write_run_files(run: Run) -> None:
    """Rank 0: resolved config, data report, tokenizer and encoder config in the run directory."""
    run_dir, data, model = run.run_dir, run.data, run.engine.module.model
    save_config(run.config, run_dir / "config.yaml")
    (run_dir / "data_report.json").write_text(json.dumps(data.report, indent=2))
    data.tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    model.encoder.config.to_json_file(str(run_dir / "encoder_config.json"))
    log.info(
        "model: %s; top layer: %s; schedule %s: %d steps",
        describe(model),
        "at the rows the losses read" if sparse_top(run) else "every row",
        run.schedule.name,
        run.schedule.total_steps,
    )


def _prepare_on_rank_zero(config: RunConfig, rank: int, progress: bool) -> PreparedData:
    import torch.distributed as dist

    if rank == 0:
        data = prepare_data(config, progress=progress)
    dist.barrier()
    if rank != 0:
        data = prepare_data(config, progress=False)
    return data
