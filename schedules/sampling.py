"""Which task trains at a given step: pure, seeded functions of (stage, consumed, step).

No sampler keeps hidden state: the draw for step s depends only on the seed, s and the
steps each task has consumed so far in the stage, so a resumed run draws the same tasks.
Every sampler draws only among tasks with budget left, so every stage ends exactly on
budget whatever the draws.

- ``remaining_budget``: ERNIE 2.0 (Sun et al., AAAI 2020, arXiv 1907.12412): in
  proportion to each task's remaining steps (a uniformly shuffled stage).
- ``fixed``: in proportion to ``sampling_options["weights"][task]``.
- ``temperature``: p ∝ n^(1/T), n = ``sampling_options["sizes"][task]`` (dataset sizes,
  filled in by the trainer with ``with_dataset_sizes``), T =
  ``sampling_options.get("temperature", 1.0)`` (T=1 size-proportional, large T uniform;
  as in multilingual/multi-task mixing, e.g. Arivazhagan et al. 2019, Raffel et al. 2020).
- ``round_robin``: deterministic; the task with the largest remaining fraction of its
  budget, ties by introduction order (interleaves tasks evenly).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction

from schedules.options import (
    OptionsError,
    Settings,
    bounded,
    build_settings,
    coerce,
    option_names,
)
from schedules.types import Schedule, Stage
from schedules.validation import unknown_name

Sampler = Callable[[Stage, Mapping[str, int], int, int], str]


def step_rng(seed: int, step: int) -> random.Random:
    """A generator that depends only on (seed, step); distinct pairs give unrelated streams."""
    # A string seed is hashed with SHA-512 by ``random`` (stable across processes), so
    # (seed, step) and (seed + 1, step - k) never share a stream.
    return random.Random(f"{seed}:{step}")


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


def open_tasks(stage: Stage, consumed: Mapping[str, int]) -> list[str]:
    """Tasks of the stage with budget left, in introduction order (error if none)."""
    tasks = [t for t, left in remaining(stage, consumed).items() if left > 0]
    if not tasks:
        raise ValueError(f"stage {stage.name!r} has no budget left")
    return tasks


def remaining_budget(stage: Stage, consumed: Mapping[str, int], step: int, seed: int) -> str:
    """ERNIE 2.0: draw in proportion to each task's remaining budget (ends exactly on budget)."""
    return draw_weighted(remaining(stage, consumed), step_rng(seed, step))


def positive_option(stage: Stage, key: str, tasks: list[str]) -> dict[str, float]:
    """``stage.sampling_options[key][task]`` for ``tasks``; each must be a number > 0."""
    values = stage.sampling_options.get(key)
    if not isinstance(values, Mapping):
        raise ValueError(
            f"stage {stage.name!r}: sampling {stage.sampling!r} needs sampling_options.{key}, "
            "a mapping task -> number > 0"
        )
    out = {}
    for task in tasks:
        value = values.get(task)
        try:  # read like every option: "3" and 3 are 3.0; true and null are not numbers
            number = coerce(value, float, f"sampling_options.{key}[{task!r}]")
        except OptionsError:
            number = math.nan
        if not number > 0:
            raise ValueError(
                f"stage {stage.name!r}: sampling_options.{key}[{task!r}] must be a number > 0, "
                f"got {value!r}"
            )
        out[task] = number
    return out


def fixed(stage: Stage, consumed: Mapping[str, int], step: int, seed: int) -> str:
    """Draw in proportion to fixed ``sampling_options["weights"]`` among tasks with budget left."""
    weights = positive_option(stage, "weights", open_tasks(stage, consumed))
    return draw_weighted(weights, step_rng(seed, step))


def temperature_weights(sizes: Mapping[str, float], temp: float) -> dict[str, float]:
    """Weights n^(1/temp), scaled so the largest is 1 (computed in log space: no overflow)."""
    if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not temp > 0:
        raise ValueError(f"sampling_options.temperature must be a number > 0, got {temp!r}")
    logs = {task: math.log(size) / temp for task, size in sizes.items()}
    top = max(logs.values())
    return {task: math.exp(value - top) for task, value in logs.items()}


def temperature(stage: Stage, consumed: Mapping[str, int], step: int, seed: int) -> str:
    """Draw with p ∝ size^(1/T) among tasks with budget left."""
    sizes = positive_option(stage, "sizes", open_tasks(stage, consumed))
    weights = temperature_weights(sizes, stage.sampling_options.get("temperature", 1.0))
    return draw_weighted(weights, step_rng(seed, step))


def round_robin(stage: Stage, consumed: Mapping[str, int], step: int, seed: int) -> str:
    """The task with the largest remaining fraction of its budget; ties by introduction order."""
    left = remaining(stage, consumed)
    # max() keeps the first of equal keys, and Fraction compares exactly.
    return max(open_tasks(stage, consumed), key=lambda t: Fraction(left[t], stage.budgets[t]))


SAMPLERS: dict[str, Sampler] = {
    "remaining_budget": remaining_budget,
    "fixed": fixed,
    "temperature": temperature,
    "round_robin": round_robin,
}


@dataclass(frozen=True)
class NoSamplingOptions(Settings):
    """``remaining_budget`` and ``round_robin`` read no options."""


@dataclass(frozen=True)
class FixedSamplingOptions(Settings):
    """Options of ``fixed``: a weight > 0 for every task of the stage."""

    weights: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TemperatureSamplingOptions(Settings):
    """Options of ``temperature``; ``sizes`` (examples per task) is filled in by the trainer."""

    temperature: float = bounded(1.0, low=0.0, low_open=True)
    sizes: Mapping[str, float] | None = None


# The settings dataclass of each sampler: its ``sampling_options``.
SAMPLER_SETTINGS: dict[str, type[Settings]] = {
    "remaining_budget": NoSamplingOptions,
    "fixed": FixedSamplingOptions,
    "temperature": TemperatureSamplingOptions,
    "round_robin": NoSamplingOptions,
}

# The sampling_options keys each sampler reads.
SAMPLING_OPTIONS: dict[str, frozenset[str]] = {
    name: frozenset(option_names(cls)) for name, cls in SAMPLER_SETTINGS.items()
}


def check_sampling(stage: Stage) -> None:
    """Raise ValueError for an unknown sampler, unknown options or bad option values.

    Options are built into the sampler's settings dataclass (names, types and ranges
    checked like the config's); dataset sizes for ``temperature`` are only checked when
    present (the trainer adds them).
    """
    if stage.sampling not in SAMPLERS:
        error = unknown_name("sampling", stage.sampling, SAMPLERS)
        raise ValueError(f"stage {stage.name!r}: {error}")
    try:
        build_settings(SAMPLER_SETTINGS[stage.sampling], stage.sampling_options, "sampling_options")
    except OptionsError as error:
        raise ValueError(f"stage {stage.name!r} (sampling {stage.sampling!r}): {error}") from None
    if stage.sampling == "fixed":
        positive_option(stage, "weights", list(stage.tasks))
    if stage.sampling == "temperature" and "sizes" in stage.sampling_options:
        positive_option(stage, "sizes", list(stage.tasks))


def with_dataset_sizes(schedule: Schedule, sizes: Mapping[str, int]) -> Schedule:
    """The schedule with ``sampling_options["sizes"]`` filled in for ``temperature`` stages."""
    stages = []
    for stage in schedule.stages:
        if stage.sampling == "temperature":
            missing = [t for t in stage.tasks if t not in sizes]
            if missing:
                raise ValueError(f"stage {stage.name!r}: no dataset size for {missing}")
            options = {**stage.sampling_options, "sizes": {t: sizes[t] for t in stage.tasks}}
            stage = dataclasses.replace(stage, sampling_options=options)
        stages.append(stage)
    return dataclasses.replace(schedule, stages=tuple(stages))


def sample_task(stage: Stage, consumed: Mapping[str, int], step: int, seed: int) -> str:
    """Draw the task of ``step`` with the stage's sampler."""
    if stage.sampling not in SAMPLERS:
        raise unknown_name("sampling", stage.sampling, SAMPLERS)
    return SAMPLERS[stage.sampling](stage, consumed, step, seed)
