"""Multi-task learning baseline (ERNIE 2.0: Sun et al., AAAI 2020, arXiv 1907.12412).

All tasks train together in a single stage, each for ``iterations_per_task`` steps; the
task of each step is drawn by the stage's sampler. Same total cost as ``cmtl`` (T * N).
"""

from __future__ import annotations

from collections.abc import Sequence

from schedules.types import Schedule, Stage
from schedules.validation import check_tasks


def multitask(tasks: Sequence[str], iterations_per_task: int) -> Schedule:
    """One stage holding every task with ``iterations_per_task`` steps each."""
    tasks = check_tasks(tasks, iterations_per_task, minimum=1, kind="multitask")
    stage = Stage(name="stage1", budgets=dict.fromkeys(tasks, iterations_per_task))
    return Schedule(name="multitask", stages=(stage,))
