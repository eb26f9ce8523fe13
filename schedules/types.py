"""Schedule data: a schedule is a tuple of stages; a stage is a budget of steps per task.

Pure data plus pure functions of the step number; nothing here imports torch.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from schedules.validation import did_you_mean


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Stage:
    """One stage: which tasks train, and for how many optimizer steps each.

    ``budgets`` keeps insertion order (the order tasks were introduced). ``sampling`` names
    how the task of each step is drawn (see ``schedules.sampling``); ``weighting`` names the
    loss-balancing method for steps that combine several task losses.
    """

    name: str
    budgets: Mapping[str, int]
    sampling: str = "remaining_budget"
    sampling_options: Mapping[str, Any] = field(default_factory=dict)
    weighting: str = "fixed"
    weighting_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for task, steps in self.budgets.items():
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
                raise ValueError(f"stage {self.name!r}: budget of {task!r} must be an int >= 0")
        if self.steps <= 0:
            raise ValueError(f"stage {self.name!r} has no steps")
        object.__setattr__(self, "budgets", _frozen(self.budgets))
        object.__setattr__(self, "sampling_options", _frozen(self.sampling_options))
        object.__setattr__(self, "weighting_options", _frozen(self.weighting_options))

    @property
    def tasks(self) -> tuple[str, ...]:
        """Tasks trained in this stage, in introduction order."""
        return tuple(t for t, n in self.budgets.items() if n > 0)

    @property
    def steps(self) -> int:
        """Optimizer steps in this stage (the sum of its budgets)."""
        return sum(self.budgets.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (for YAML/JSON)."""
        return {
            "name": self.name,
            "budgets": dict(self.budgets),
            "sampling": self.sampling,
            "sampling_options": dict(self.sampling_options),
            "weighting": self.weighting,
            "weighting_options": dict(self.weighting_options),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Stage:
        """Inverse of ``to_dict``; unknown keys are errors."""
        known = {
            "name",
            "budgets",
            "sampling",
            "sampling_options",
            "weighting",
            "weighting_options",
        }
        for key in data:
            if key not in known:
                raise ValueError(
                    f"unknown stage key {key!r}{did_you_mean(key, known)}; known: {sorted(known)}"
                )
        return cls(**{k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()})


@dataclass(frozen=True)
class Schedule:
    """An ordered tuple of stages; step numbers are global and 0-based."""

    name: str
    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError(f"schedule {self.name!r} has no stages")
        object.__setattr__(self, "stages", tuple(self.stages))

    @property
    def total_steps(self) -> int:
        """Steps over all stages."""
        return sum(s.steps for s in self.stages)

    @property
    def tasks(self) -> tuple[str, ...]:
        """Every task, in order of first appearance."""
        seen: dict[str, None] = {}
        for stage in self.stages:
            seen.update(dict.fromkeys(stage.tasks))
        return tuple(seen)

    @property
    def boundaries(self) -> tuple[int, ...]:
        """First step of each stage, plus ``total_steps`` at the end."""
        out = [0]
        for stage in self.stages:
            out.append(out[-1] + stage.steps)
        return tuple(out)

    def stage_at(self, step: int) -> int:
        """Index of the stage that step ``step`` (0-based) belongs to."""
        if not 0 <= step < self.total_steps:
            raise IndexError(f"step {step} outside schedule of {self.total_steps} steps")
        return bisect.bisect_right(self.boundaries, step) - 1

    def budget_per_task(self) -> dict[str, int]:
        """Total steps of each task over the whole schedule."""
        totals: dict[str, int] = {}
        for stage in self.stages:
            for task, n in stage.budgets.items():
                totals[task] = totals.get(task, 0) + n
        return totals

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (for YAML/JSON)."""
        return {"name": self.name, "stages": [s.to_dict() for s in self.stages]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        """Inverse of ``to_dict``."""
        return cls(data.get("name", "custom"), tuple(Stage.from_dict(s) for s in data["stages"]))
