"""Building a run's parts from the config: schedule, loss weightings, model + heads, streams.

Pure constructors with no run state: ``resume`` (which rebuilds a checkpoint's old shape to
add tasks) and ``setup`` both use them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ernie_cpt.config import RunConfig
from ernie_cpt.data.prepare import PreparedData
from ernie_cpt.data.task_stream import TaskStream
from ernie_cpt.model import build_model, grow_task_embeddings
from ernie_cpt.training.train_module import TrainModule
from ernie_cpt.training.weighting import build_weighting, check_zero_stage
from schedules import Schedule, build_schedule
from schedules.sampling import with_dataset_sizes


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


def build_schedule_for(config: RunConfig, sizes: Mapping[str, int]) -> Schedule:
    """The configured schedule, with dataset sizes filled in for size-based samplers."""
    return with_dataset_sizes(schedule_from_config(config), sizes)


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


def build_module(
    config: RunConfig, data: PreparedData, tasks: list[str], schedule: Schedule, task_rows: int
) -> TrainModule:
    """Model (heads of ``tasks``, task embedding of at least ``task_rows`` rows) + weightings."""
    chosen = {name: data.tasks[name] for name in tasks}
    model = build_model(
        config.model, chosen, len(data.tokenizer), data.tokenizer.pad_token_id, config.sharing
    )
    grow_task_embeddings(model, task_rows)
    return TrainModule(model, chosen, build_weightings(schedule, config.train.zero_stage))


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
        t = config.train
        streams[name] = TaskStream(
            dataset, name, t.micro_batch_size, t.seed, rank, world_size, t.bucket_size
        )
    return streams
