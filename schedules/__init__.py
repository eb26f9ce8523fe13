"""Schedules: how pre-training tasks are combined over time. Pure Python, no torch.

``SCHEDULES`` maps a config string to a builder ``(tasks, iterations_per_task) -> Schedule``;
``build_schedule`` is the one entry point the trainer calls (it also handles ``custom``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from schedules.cmtl import cmtl
from schedules.continual import continual
from schedules.custom import from_stage_dicts, resolve_token_budgets
from schedules.multitask import multitask
from schedules.pairwise import pairwise
from schedules.sampling import SAMPLERS, check_sampling, sample_task, with_dataset_sizes
from schedules.table import format_stage_table
from schedules.types import Schedule, Stage
from schedules.validation import did_you_mean, unknown_name

Builder = Callable[[Sequence[str], int], Schedule]

SCHEDULES: dict[str, Builder] = {
    "continual": continual,
    "multitask": multitask,
    "cmtl": cmtl,
    "pairwise": pairwise,
}

# Every kind ``build_schedule`` accepts: the builders plus stages written in the config.
SCHEDULE_KINDS: tuple[str, ...] = (*SCHEDULES, "custom")


def build_schedule(
    kind: str,
    tasks: Sequence[str],
    iterations_per_task: int,
    stages: Sequence[Mapping[str, Any]] | None = None,
    sampling: str = "remaining_budget",
    *,
    sampling_options: Mapping[str, Any] | None = None,
    weighting: str = "fixed",
    weighting_options: Mapping[str, Any] | None = None,
) -> Schedule:
    """The schedule of ``kind`` for ``tasks``; the trainer's single entry point.

    ``weighting`` (with ``weighting_options``) is the loss weighting of every stage that does
    not name its own (every built-in stage; custom stages without a ``weighting`` key).

    Built-in kinds give every task ``iterations_per_task`` steps and every stage
    ``sampling`` (with ``sampling_options``, e.g. ``{"weights": {...}}`` for ``fixed``).
    ``custom`` reads ``stages`` (``iterations_per_task`` is unused); ``sampling`` is the
    default of stages that name none, and every stage task must be one of ``tasks``
    (when ``tasks`` is given).
    """
    if kind == "custom":
        if not stages:
            raise ValueError(
                "schedule kind 'custom' needs stages: [{name, budgets: {task: steps}}, ...]"
            )
        schedule = from_stage_dicts(stages, sampling=sampling)
        for task in schedule.tasks if tasks else ():
            if task not in tasks:
                raise unknown_name(
                    "task in custom stages (not in the configured tasks)", task, tasks
                )
        default = {"weighting": weighting, "weighting_options": dict(weighting_options or {})}
        custom = tuple(
            stage if "weighting" in given else dataclasses.replace(stage, **default)
            for given, stage in zip(stages, schedule.stages, strict=True)
        )
        return dataclasses.replace(schedule, stages=custom)
    if kind not in SCHEDULES:
        raise unknown_name("schedule kind", kind, SCHEDULE_KINDS)
    if stages:
        raise ValueError(f"stages are only read for kind 'custom', not {kind!r}")
    schedule = SCHEDULES[kind](tasks, iterations_per_task)
    stages_out = tuple(
        dataclasses.replace(
            s,
            sampling=sampling,
            sampling_options=dict(sampling_options or {}),
            weighting=weighting,
            weighting_options=dict(weighting_options or {}),
        )
        for s in schedule.stages
    )
    for stage in stages_out:
        check_sampling(stage)
    return dataclasses.replace(schedule, stages=stages_out)


__all__ = [
    "SAMPLERS",
    "SCHEDULES",
    "SCHEDULE_KINDS",
    "Schedule",
    "Stage",
    "build_schedule",
    "check_sampling",
    "cmtl",
    "continual",
    "did_you_mean",
    "format_stage_table",
    "from_stage_dicts",
    "multitask",
    "pairwise",
    "resolve_token_budgets",
    "sample_task",
    "with_dataset_sizes",
]
