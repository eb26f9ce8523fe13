"""Continual multi-task learning (ERNIE 2.0: Sun et al., AAAI 2020, arXiv 1907.12412): the pyramid.

Tasks arrive one per stage; each stage trains the new task together with all earlier ones.
Allocation (the paper's 4-task comparison, reproduced by olfmlm): each task's budget N is
split into T+1 equal units; in stage i the task introduced there gets i+2 units and every
earlier task 1 unit, so each task totals exactly N over the T stages.
"""

from __future__ import annotations

from collections.abc import Sequence

from schedules.types import Schedule, Stage
from schedules.validation import check_tasks


def split_units(total: int, units: int) -> list[int]:
    """Split ``total`` into ``units`` integers differing by at most 1 (larger first)."""
    base, extra = divmod(total, units)
    return [base + (1 if i < extra else 0) for i in range(units)]


def cmtl(tasks: Sequence[str], iterations_per_task: int, name: str = "cmtl") -> Schedule:
    """The ERNIE 2.0 pyramid: T stages, task i introduced in stage i with i+2 of T+1 units."""
    tasks = list(tasks)
    count = len(tasks)
    tasks = check_tasks(tasks, iterations_per_task, minimum=count + 1, kind="cmtl")
    # units[task][k]: the k-th unit of that task's budget; unit 0..i+1 go to its own stage.
    units = {task: split_units(iterations_per_task, count + 1) for task in tasks}
    stages = []
    for i, new_task in enumerate(tasks):
        budgets = {earlier: units[earlier][i + 1] for earlier in tasks[:i]}
        budgets[new_task] = sum(units[new_task][: i + 2])
        stages.append(Stage(name=f"stage{i + 1}", budgets=budgets))
    # Every earlier task has consumed units 0..i+1 in its own stage, then one unit per stage:
    # unit index i+1 in stage i. Task j (introduced at stage j) uses units 0..j+1 there and
    # units j+2..T in stages j+1..T-1: exactly T+1 units.
    return Schedule(name=name, stages=tuple(stages))
