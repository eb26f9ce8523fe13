"""Continual learning baseline (ERNIE 2.0: Sun et al., AAAI 2020, arXiv 1907.12412).

One task per stage, in order, with no replay of earlier tasks: each task trains for all
of its ``iterations_per_task`` steps alone. Same total cost as ``cmtl`` and
``multitask`` (T * N steps); the paper's comparison of learning methods uses it to show
that earlier tasks are forgotten.
"""

from __future__ import annotations

from collections.abc import Sequence

from schedules.types import Schedule, Stage
from schedules.validation import check_tasks


def continual(tasks: Sequence[str], iterations_per_task: int) -> Schedule:
    """T stages; stage i trains only task i, for ``iterations_per_task`` steps."""
    tasks = check_tasks(tasks, iterations_per_task, minimum=1, kind="continual")
    stages = [
        Stage(name=f"stage{i + 1}", budgets={task: iterations_per_task})
        for i, task in enumerate(tasks)
    ]
    return Schedule(name="continual", stages=tuple(stages))
