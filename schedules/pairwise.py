"""Singles, then pairs, then all: a variant of ERNIE 2.0's continual multi-task learning.

ERNIE 2.0 (Sun et al., AAAI 2020, arXiv 1907.12412) compares continual, multi-task and
continual multi-task learning at equal cost. This variant grows the mixture more slowly:
(A)(B)(C) -> (A,B)(B,C)(A,C) -> (A,B,C). Every group is its own stage.

Pairs, for T tasks: the T consecutive pairs with wrap-around, (t0,t1)(t1,t2)...(t[T-1],t0),
each written in introduction order (so the last one reads (t0,t[T-1])). Every task is in
exactly two pairs, so every task gets the same treatment; for T=3 these are all 3 pairs.

Budgets: each task's N steps (N >= 6) are cut into 6 near-equal units (``split_units``): 2 in
its single stage, 1 unit in each of its two pair stages (the earlier pair gets the
earlier unit), 2 units in the final all-task stage. Each task totals exactly N, the whole
schedule T * N like the other schedules, and each of the three phases costs about a third.

Small T: T=1 is one stage (A) with N steps. T=2 has no separate pair phase (its only
pair is the all-task stage): (A)(B) -> (A,B), each task's N split in halves (N >= 2).
"""

from __future__ import annotations

from collections.abc import Sequence

from schedules.cmtl import split_units
from schedules.types import Schedule, Stage
from schedules.validation import check_tasks


def ring_pairs(tasks: Sequence[str]) -> list[tuple[str, str]]:
    """Consecutive pairs with wrap-around, each in introduction order; none for T < 3."""
    if len(tasks) < 3:
        return []
    pairs = [(tasks[i], tasks[i + 1]) for i in range(len(tasks) - 1)]
    return [*pairs, (tasks[0], tasks[-1])]


def pairwise(tasks: Sequence[str], iterations_per_task: int) -> Schedule:
    """Singles, then consecutive pairs (with wrap-around), then all tasks together."""
    tasks = list(tasks)
    count = len(tasks)
    unit_count = {1: 1, 2: 2}.get(count, 6)
    tasks = check_tasks(tasks, iterations_per_task, minimum=unit_count, kind="pairwise")
    if count == 1:
        only = Stage(name="single1", budgets={tasks[0]: iterations_per_task})
        return Schedule(name="pairwise", stages=(only,))
    if count == 2:
        first_half, second_half = split_units(iterations_per_task, 2)
        single, pair_units, together = first_half, [], second_half
    else:
        units = split_units(iterations_per_task, 6)
        single, pair_units, together = units[0] + units[1], units[2:4], units[4] + units[5]
    # Each task's pair units, handed out in the order its pair stages come.
    next_pair_unit = {task: iter(pair_units) for task in tasks}
    stages = [Stage(name=f"single{i + 1}", budgets={task: single}) for i, task in enumerate(tasks)]
    stages += [
        Stage(name=f"pair{i + 1}", budgets={a: next(next_pair_unit[a]), b: next(next_pair_unit[b])})
        for i, (a, b) in enumerate(ring_pairs(tasks))
    ]
    stages.append(Stage(name="all", budgets=dict.fromkeys(tasks, together)))
    return Schedule(name="pairwise", stages=tuple(stages))
