"""Which task trains at a given step: pure, seeded functions of (stage, consumed, step).

No sampler keeps hidden state: the draw for step s depends only on the seed, s and the
steps each task has consumed so far in the stage, so a resumed run draws the same tasks.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

from schedules.types import Stage

Sampler = Callable[[Stage, Mapping[str, int], int, int], str]


def step_rng(seed: int, step: int) -> random.Random:
    """A generator that depends only on (seed, step)."""
    return random.Random(seed * 1_000_003 + step)


def draw_weighted(weights: Mapping[str, float], rng: random.Random) -> str:
    """Draw a key with probability proportional to its weight (weights > 0 somewhere)."""
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("no task has weight left in this stage")
    point = rng.random() * total
    for task, weight in weights.items():
        point -= weight
        if point < 0 and weight > 0:
            return task
    return next(t for t, w in reversed(list(weights.items())) if w > 0)


def remaining(stage: Stage, consumed: Mapping[str, int]) -> dict[str, int]:
    """Steps each task of the stage has left."""
    return {t: stage.budgets[t] - consumed.get(t, 0) for t in stage.tasks}


def remaining_budget(stage: Stage, consumed: Mapping[str, int], step: int, seed: int) -> str:
    """ERNIE 2.0: draw in proportion to each task's remaining budget (ends exactly on budget)."""
    return draw_weighted(remaining(stage, consumed), step_rng(seed, step))


SAMPLERS: dict[str, Sampler] = {"remaining_budget": remaining_budget}


def sample_task(stage: Stage, consumed: Mapping[str, int], step: int, seed: int) -> str:
    """Draw the task of ``step`` with the stage's sampler."""
    try:
        sampler = SAMPLERS[stage.sampling]
    except KeyError:
        raise ValueError(
            f"unknown sampling {stage.sampling!r}; known: {sorted(SAMPLERS)}"
        ) from None
    return sampler(stage, consumed, step, seed)
