"""Schedules written out stage by stage in the config (YAML), in steps or in tokens.

Each stage is ``{name, budgets: {task: steps}, sampling?, sampling_options?, weighting?,
weighting_options?}``; ``token_budgets: {task: tokens}`` may replace ``budgets`` and is
turned into steps by ``resolve_token_budgets`` (steps = ceil(tokens / tokens per step)).
Stages, budgets and samplers are the data model of ERNIE 2.0's continual multi-task
learning (Sun et al., AAAI 2020, arXiv 1907.12412); this lets a user write any mixture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from schedules.sampling import check_sampling
from schedules.types import Schedule, Stage
from schedules.validation import did_you_mean, unknown_name

STAGE_KEYS = (
    "name",
    "budgets",
    "token_budgets",
    "sampling",
    "sampling_options",
    "weighting",
    "weighting_options",
)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_keys(where: str, stage: Any) -> None:
    if not isinstance(stage, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(stage).__name__}")
    for key in stage:
        if key not in STAGE_KEYS:
            raise ValueError(
                f"{where}: unknown key {key!r}{did_you_mean(key, STAGE_KEYS)}; "
                f"known: {list(STAGE_KEYS)}"
            )
    if ("budgets" in stage) == ("token_budgets" in stage):
        raise ValueError(f"{where}: give exactly one of 'budgets' (steps) or 'token_budgets'")


def _budget_mapping(where: str, key: str, budgets: Any) -> Mapping[str, Any]:
    if not isinstance(budgets, Mapping) or not budgets:
        raise ValueError(f"{where}: {key} is empty; give at least one task: steps")
    for task, value in budgets.items():
        if not isinstance(task, str):
            raise ValueError(f"{where}: task names must be strings, got {task!r}")
        if not _is_number(value) or value < 0:
            raise ValueError(f"{where}: {key}[{task!r}] must be a number >= 0, got {value!r}")
    if not any(budgets.values()):
        raise ValueError(f"{where}: every {key} entry is 0 (an empty stage)")
    return budgets


def resolve_token_budgets(
    stage_dicts: Sequence[Mapping[str, Any]], tokens_per_step: Mapping[str, float]
) -> list[dict[str, Any]]:
    """Copies of the stages with ``token_budgets`` turned into ``budgets`` in steps.

    steps = ceil(tokens / tokens_per_step[task]), computed exactly (no float round-off).
    Stages already in steps are copied unchanged.
    """
    out = []
    for i, stage in enumerate(stage_dicts):
        where = f"stage {i + 1}"
        _check_keys(where, stage)
        stage = dict(stage)
        if "token_budgets" in stage:
            tokens = _budget_mapping(where, "token_budgets", stage.pop("token_budgets"))
            budgets = {}
            for task, count in tokens.items():
                if task not in tokens_per_step:
                    raise unknown_name(
                        f"task in {where} (no tokens_per_step for it)", task, tokens_per_step
                    )
                rate = tokens_per_step[task]
                if not _is_number(rate) or not rate > 0:
                    raise ValueError(f"tokens_per_step[{task!r}] must be > 0, got {rate!r}")
                budgets[task] = math.ceil(Fraction(count) / Fraction(rate))
            stage["budgets"] = budgets
        out.append(stage)
    return out


def from_stage_dicts(
    stages: Sequence[Mapping[str, Any]],
    name: str = "custom",
    *,
    tokens_per_step: Mapping[str, float] | None = None,
    sampling: str = "remaining_budget",
) -> Schedule:
    """A schedule from stage dicts as written in YAML.

    ``sampling`` is used by stages that name none. Stages with ``token_budgets`` need
    ``tokens_per_step`` (or call ``resolve_token_budgets`` first). Missing stage names
    default to ``stage<i>``. Weighting names are checked where the weighting methods live.
    """
    if isinstance(stages, (str, bytes, Mapping)) or not isinstance(stages, Sequence):
        raise ValueError(f"stages must be a list of stage mappings, got {type(stages).__name__}")
    if not stages:
        raise ValueError("a custom schedule needs at least one stage")
    for i, stage in enumerate(stages):
        _check_keys(f"stage {i + 1}", stage)
    if any("token_budgets" in stage for stage in stages):
        if tokens_per_step is None:
            raise ValueError(
                "stages give token_budgets: pass tokens_per_step to turn them into steps"
            )
        stages = resolve_token_budgets(stages, tokens_per_step)
    built: list[Stage] = []
    for i, stage in enumerate(stages):
        where = f"stage {i + 1}"
        budgets = _budget_mapping(where, "budgets", stage["budgets"])
        if any(not isinstance(v, int) for v in budgets.values()):
            raise ValueError(f"{where}: budgets are whole steps (ints), got {dict(budgets)}")
        fields = {key: stage[key] for key in STAGE_KEYS if key in stage and key != "token_budgets"}
        fields.setdefault("name", f"stage{i + 1}")
        fields.setdefault("sampling", sampling)
        if not isinstance(fields["name"], str) or not fields["name"]:
            raise ValueError(f"{where}: name must be a non-empty string, got {fields['name']!r}")
        if fields["name"] in {s.name for s in built}:
            raise ValueError(f"{where}: duplicate stage name {fields['name']!r}")
        built.append(Stage.from_dict(fields))
        check_sampling(built[-1])
    return Schedule(name=name, stages=tuple(built))
