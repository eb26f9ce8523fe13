"""Schedules: budgets, stage contents, step lookup, YAML round trip, samplers, errors."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from schedules import (
    SAMPLERS,
    SCHEDULES,
    Schedule,
    Stage,
    build_schedule,
    cmtl,
    format_stage_table,
    from_stage_dicts,
    pairwise,
    resolve_token_budgets,
    sample_task,
    with_dataset_sizes,
)
from schedules.sampling import temperature_weights

TASK_NAMES = [f"task{i}" for i in range(8)]


def minimum_iterations(kind: str, count: int) -> int:
    """Smallest iterations_per_task each built-in kind accepts for ``count`` tasks."""
    if kind == "cmtl":
        return count + 1
    if kind == "pairwise":
        return {1: 1, 2: 2}.get(count, 6)
    return 1


def budgets(schedule: Schedule) -> list[dict[str, int]]:
    return [dict(stage.budgets) for stage in schedule.stages]


def run_stage(stage: Stage, seed: int, first_step: int = 0) -> list[str]:
    """Draw every step of a stage the way the trainer does; check no budget is overrun."""
    consumed: Counter[str] = Counter()
    drawn = []
    for step in range(first_step, first_step + stage.steps):
        task = sample_task(stage, consumed, step, seed)
        consumed[task] += 1
        assert consumed[task] <= stage.budgets[task], f"{stage.sampling} overran {task}"
        drawn.append(task)
    return drawn


# --- every built-in schedule: budgets and cost -----------------------------------------


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
@settings(max_examples=200, deadline=None)
@given(count=st.integers(1, 8), data=st.data())
def test_every_task_gets_exactly_its_budget(kind, count, data):
    tasks = TASK_NAMES[:count]
    iterations = data.draw(st.integers(minimum_iterations(kind, count), 200_000))
    schedule = build_schedule(kind, tasks, iterations)
    assert schedule.budget_per_task() == dict.fromkeys(tasks, iterations)
    assert schedule.total_steps == count * iterations
    assert schedule.tasks == tuple(tasks)
    assert all(stage.steps > 0 for stage in schedule.stages)
    assert all(all(n > 0 for n in stage.budgets.values()) for stage in schedule.stages)


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
@pytest.mark.parametrize("count", range(1, 9))
def test_too_few_iterations_is_an_error(kind, count):
    with pytest.raises(ValueError, match="iterations_per_task"):
        SCHEDULES[kind](TASK_NAMES[:count], minimum_iterations(kind, count) - 1)


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_bad_task_lists_are_errors(kind):
    with pytest.raises(ValueError, match="at least one task"):
        SCHEDULES[kind]([], 100)
    with pytest.raises(ValueError, match="duplicate"):
        SCHEDULES[kind](["a", "b", "a"], 100)


# --- exact stage contents --------------------------------------------------------------


def test_cmtl_matches_the_paper_for_four_tasks():
    tasks = [
        "knowledge_masking",
        "capitalization",
        "token_document_relation",
        "sentence_reordering",
    ]
    km, cap, tdr, sr = tasks
    assert budgets(cmtl(tasks, 50_000)) == [
        {km: 20_000},
        {km: 10_000, cap: 30_000},
        {km: 10_000, cap: 10_000, tdr: 40_000},
        {km: 10_000, cap: 10_000, tdr: 10_000, sr: 50_000},
    ]


def test_pairwise_three_tasks():
    schedule = pairwise(["A", "B", "C"], 60)
    assert [s.name for s in schedule.stages] == [
        "single1",
        "single2",
        "single3",
        "pair1",
        "pair2",
        "pair3",
        "all",
    ]
    assert budgets(schedule) == [
        {"A": 20},
        {"B": 20},
        {"C": 20},
        {"A": 10, "B": 10},
        {"B": 10, "C": 10},
        {"A": 10, "C": 10},
        {"A": 20, "B": 20, "C": 20},
    ]


def test_pairwise_small_and_uneven():
    assert budgets(pairwise(["A"], 7)) == [{"A": 7}]
    assert budgets(pairwise(["A", "B"], 7)) == [{"A": 4}, {"B": 4}, {"A": 3, "B": 3}]
    # 61 = 11+10+10+10+10+10: the single stage takes the larger unit.
    four = pairwise(["A", "B", "C", "D"], 61)
    assert budgets(four)[3:] == [
        {"D": 21},
        {"A": 10, "B": 10},
        {"B": 10, "C": 10},
        {"C": 10, "D": 10},
        {"A": 10, "D": 10},
        {"A": 20, "B": 20, "C": 20, "D": 20},
    ]


def test_continual_and_multitask():
    assert budgets(build_schedule("continual", ["A", "B", "C"], 5)) == [
        {"A": 5},
        {"B": 5},
        {"C": 5},
    ]
    assert budgets(build_schedule("multitask", ["A", "B", "C"], 5)) == [{"A": 5, "B": 5, "C": 5}]


# --- stage_at ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
@pytest.mark.parametrize(("count", "iterations"), [(1, 10), (3, 60), (4, 50_000), (8, 41)])
def test_stage_at_every_boundary(kind, count, iterations):
    schedule = build_schedule(kind, TASK_NAMES[:count], iterations)
    bounds = schedule.boundaries
    assert bounds[0] == 0 and bounds[-1] == schedule.total_steps
    for index, (first, end) in enumerate(zip(bounds, bounds[1:], strict=False)):
        assert schedule.stage_at(first) == index
        assert schedule.stage_at(end - 1) == index
    for outside in (-1, schedule.total_steps, schedule.total_steps + 5):
        with pytest.raises(IndexError):
            schedule.stage_at(outside)


# --- YAML round trip -------------------------------------------------------------------


def yaml_round_trip(schedule: Schedule) -> Schedule:
    return Schedule.from_dict(yaml.safe_load(yaml.safe_dump(schedule.to_dict())))


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_yaml_round_trip(kind, count):
    schedule = build_schedule(kind, TASK_NAMES[:count], 100)
    assert yaml_round_trip(schedule) == schedule


def test_yaml_round_trip_keeps_options():
    schedule = from_stage_dicts(
        [
            {"name": "warm", "budgets": {"a": 3}},
            {
                "name": "mix",
                "budgets": {"a": 2, "b": 5},
                "sampling": "fixed",
                "sampling_options": {"weights": {"a": 1.0, "b": 3.0}},
                "weighting": "uncertainty",
                "weighting_options": {"init": 0.5},
            },
        ],
        name="mine",
    )
    assert yaml_round_trip(schedule) == schedule
    sized = with_dataset_sizes(
        build_schedule("cmtl", ["a", "b"], 9, sampling="temperature"), {"a": 10, "b": 20}
    )
    assert yaml_round_trip(sized) == sized


# --- samplers --------------------------------------------------------------------------

MIXED = {"a": 300, "b": 100, "c": 50, "d": 1}
OPTIONS = {
    "remaining_budget": {},
    "fixed": {"weights": {"a": 1.0, "b": 2.0, "c": 0.5, "d": 4.0}},
    "temperature": {"sizes": {"a": 10, "b": 1000, "c": 10**9, "d": 5}, "temperature": 2.0},
    "round_robin": {},
}


def test_every_sampler_has_a_test_setting():
    assert set(OPTIONS) == set(SAMPLERS)


@pytest.mark.parametrize("sampling", sorted(SAMPLERS))
def test_sampler_ends_exactly_on_budget_and_is_deterministic(sampling):
    stage = Stage("mix", MIXED, sampling=sampling, sampling_options=OPTIONS[sampling])
    drawn = run_stage(stage, seed=7, first_step=1000)
    assert Counter(drawn) == MIXED
    assert run_stage(stage, seed=7, first_step=1000) == drawn
    other_seed = run_stage(stage, seed=8, first_step=1000)
    if sampling == "round_robin":
        assert other_seed == drawn
    else:
        assert other_seed != drawn


@pytest.mark.parametrize("sampling", sorted(SAMPLERS))
def test_sampler_resumes_identically(sampling):
    stage = Stage("mix", MIXED, sampling=sampling, sampling_options=OPTIONS[sampling])
    drawn = run_stage(stage, seed=3)
    # A resumed run knows only the step and the counts consumed so far.
    half = len(drawn) // 2
    consumed = Counter(drawn[:half])
    for step in range(half, len(drawn)):
        task = sample_task(stage, dict(consumed), step, 3)
        assert task == drawn[step]
        consumed[task] += 1


def test_remaining_budget_is_proportional_early_on():
    stage = Stage("mix", {"a": 6000, "b": 3000, "c": 1000})
    first_half = Counter(run_stage(stage, seed=0)[:5000])
    for task, share in {"a": 0.6, "b": 0.3, "c": 0.1}.items():
        assert first_half[task] / 5000 == pytest.approx(share, abs=0.03)


def test_fixed_follows_the_weights_while_budget_lasts():
    stage = Stage(
        "mix",
        {"a": 5000, "b": 5000},
        sampling="fixed",
        sampling_options={"weights": {"a": 3, "b": 1}},
    )
    drawn = run_stage(stage, seed=0)
    assert Counter(drawn[:2000])["a"] / 2000 == pytest.approx(0.75, abs=0.04)
    assert set(drawn[-1000:]) == {"b"}  # "a" ran out first; only "b" is left


def test_temperature_weights():
    assert temperature_weights({"a": 100, "b": 1}, 1.0) == pytest.approx({"a": 1.0, "b": 0.01})
    assert temperature_weights({"a": 100, "b": 1}, 2.0) == pytest.approx({"a": 1.0, "b": 0.1})
    flat = temperature_weights({"a": 10**12, "b": 1}, 1000.0)
    assert flat["b"] == pytest.approx(1.0, abs=0.03)
    assert temperature_weights({"a": 10**300, "b": 1.0}, 0.01)["a"] == 1.0  # no overflow
    with pytest.raises(ValueError, match="temperature"):
        temperature_weights({"a": 1}, 0.0)


def test_round_robin_interleaves_by_remaining_fraction():
    stage = Stage("rr", {"a": 4, "b": 2, "c": 2}, sampling="round_robin")
    assert run_stage(stage, seed=0) == ["a", "b", "c", "a", "a", "b", "c", "a"]


def test_sampler_errors():
    with pytest.raises(ValueError, match="weights"):
        sample_task(Stage("s", {"a": 1}, sampling="fixed"), {}, 0, 0)
    with pytest.raises(ValueError, match=r"weights\['b'\]"):
        sample_task(
            Stage("s", {"a": 1, "b": 1}, sampling="fixed", sampling_options={"weights": {"a": 1}}),
            {},
            0,
            0,
        )
    with pytest.raises(ValueError, match="sizes"):
        sample_task(Stage("s", {"a": 1}, sampling="temperature"), {}, 0, 0)
    with pytest.raises(ValueError, match='did you mean "round_robin"'):
        sample_task(Stage("s", {"a": 1}, sampling="round_robbin"), {}, 0, 0)
    with pytest.raises(ValueError, match="no budget left"):
        sample_task(Stage("s", {"a": 1}, sampling="round_robin"), {"a": 1}, 0, 0)


def test_with_dataset_sizes_fills_only_temperature_stages():
    schedule = from_stage_dicts(
        [
            {"name": "one", "budgets": {"a": 2}},
            {
                "name": "two",
                "budgets": {"a": 1, "b": 1},
                "sampling": "temperature",
                "sampling_options": {"temperature": 3},
            },
        ]
    )
    sized = with_dataset_sizes(schedule, {"a": 5, "b": 7, "unused": 1})
    assert dict(sized.stages[0].sampling_options) == {}
    assert dict(sized.stages[1].sampling_options) == {"temperature": 3, "sizes": {"a": 5, "b": 7}}
    with pytest.raises(ValueError, match="no dataset size"):
        with_dataset_sizes(schedule, {"a": 5})


# --- custom schedules and build_schedule -----------------------------------------------


def test_custom_stages_in_steps_and_tokens():
    stages = [
        {"name": "warm", "budgets": {"mlm": 10}},
        {"name": "mix", "token_budgets": {"mlm": 1000, "sop": 1001}, "sampling": "round_robin"},
    ]
    resolved = resolve_token_budgets(stages, {"mlm": 100, "sop": 100.0})
    assert resolved[1] == {
        "name": "mix",
        "budgets": {"mlm": 10, "sop": 11},
        "sampling": "round_robin",
    }
    assert "token_budgets" in stages[1]  # inputs are not modified
    schedule = from_stage_dicts(stages, tokens_per_step={"mlm": 100, "sop": 100.0})
    assert budgets(schedule) == [{"mlm": 10}, {"mlm": 10, "sop": 11}]
    assert [s.sampling for s in schedule.stages] == ["remaining_budget", "round_robin"]
    # 0.1 tokens per step is not exact in binary; the step count still comes out whole.
    assert resolve_token_budgets([{"token_budgets": {"a": 3}}], {"a": 0.5})[0]["budgets"] == {
        "a": 6
    }


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([], "at least one stage"),
        ({"budgets": {"a": 1}}, "list of stage mappings"),
        (["warm"], "must be a mapping"),
        ([{"name": "s", "budget": {"a": 1}}], 'did you mean "budgets"'),
        ([{"name": "s"}], "exactly one of"),
        ([{"name": "s", "budgets": {"a": 1}, "token_budgets": {"a": 1}}], "exactly one of"),
        ([{"name": "s", "budgets": {}}], "empty"),
        ([{"name": "s", "budgets": {"a": 0, "b": 0}}], "empty stage"),
        ([{"name": "s", "budgets": {"a": -3}}], ">= 0"),
        ([{"name": "s", "budgets": {"a": 2.5}}], "whole steps"),
        (
            [{"name": "s", "budgets": {"a": 1}, "sampling": "remaining-budget"}],
            'did you mean "remaining_budget"',
        ),
        ([{"name": "s", "budgets": {"a": 1}, "sampling": "fixed"}], "weights"),
        (
            [
                {
                    "name": "s",
                    "budgets": {"a": 1},
                    "sampling": "fixed",
                    "sampling_options": {"weight": {}},
                }
            ],
            'did you mean "weights"',
        ),
        (
            [{"name": "s", "budgets": {"a": 1}}, {"name": "s", "budgets": {"a": 1}}],
            "duplicate stage name",
        ),
        ([{"name": "s", "token_budgets": {"a": 1}}], "tokens_per_step"),
    ],
)
def test_custom_stage_errors(stages, message):
    with pytest.raises(ValueError, match=message):
        from_stage_dicts(stages)


def test_token_budget_errors():
    with pytest.raises(ValueError, match='did you mean "mlm"'):
        resolve_token_budgets([{"token_budgets": {"mlmm": 5}}], {"mlm": 10})
    with pytest.raises(ValueError, match="> 0"):
        resolve_token_budgets([{"token_budgets": {"mlm": 5}}], {"mlm": 0})
    with pytest.raises(ValueError, match=">= 0"):
        resolve_token_budgets([{"token_budgets": {"mlm": -5}}], {"mlm": 1})


def test_build_schedule():
    fixed = build_schedule(
        "pairwise",
        ["a", "b", "c"],
        12,
        sampling="fixed",
        sampling_options={"weights": {"a": 1, "b": 2, "c": 3}},
    )
    assert {s.sampling for s in fixed.stages} == {"fixed"}
    for stage in fixed.stages:
        assert Counter(run_stage(stage, seed=1)) == stage.budgets
    custom = build_schedule(
        "custom", ["a", "b"], 999, stages=[{"budgets": {"a": 3, "b": 1}}], sampling="round_robin"
    )
    assert custom.stages[0].name == "stage1" and custom.stages[0].sampling == "round_robin"
    assert custom.total_steps == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "cmt1"}, 'did you mean "cmtl"'),
        ({"kind": "custom"}, "needs stages"),
        ({"kind": "cmtl", "stages": [{"budgets": {"a": 1}}]}, "only read for kind 'custom'"),
        ({"kind": "cmtl", "sampling": "tempreature"}, 'did you mean "temperature"'),
        ({"kind": "custom", "stages": [{"budgets": {"aa": 1}}]}, 'did you mean "a"'),
    ],
)
def test_build_schedule_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_schedule(tasks=["a", "b"], iterations_per_task=10, **kwargs)


# --- table and import hygiene ----------------------------------------------------------


def test_format_stage_table():
    table = format_stage_table(cmtl(["a", "b"], 30))
    assert table.splitlines() == [
        "schedule cmtl: 2 stages, 60 steps",
        "stage   first step  last step  steps  sampling          weighting  tasks (steps)",
        "-" * 80,
        "stage1           0         19     20  remaining_budget  fixed      a=20",
        "stage2          20         59     40  remaining_budget  fixed      a=10 b=30",
        "-" * 80,
        "total                             60                               a=30 b=30",
    ]


def test_importing_schedules_does_not_import_torch():
    code = "import sys, schedules; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_build_schedule_gives_stages_without_their_own_weighting_the_default() -> None:
    from schedules import build_schedule

    built = build_schedule("cmtl", ["a", "b"], 9, weighting="dwa", weighting_options={"window": 5})
    assert {(s.weighting, dict(s.weighting_options)["window"]) for s in built.stages} == {
        ("dwa", 5)
    }
    custom = build_schedule(
        "custom",
        ["a", "b"],
        0,
        [
            {"name": "one", "budgets": {"a": 2}},
            {"name": "two", "budgets": {"b": 2}, "weighting": "pcgrad"},
        ],
        weighting="uncertainty",
    )
    assert [s.weighting for s in custom.stages] == ["uncertainty", "pcgrad"]
