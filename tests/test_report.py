"""The comparison report from hand-made run directories: summary.json, report.md, PNGs, W&B."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from helpers import TINY_CONFIG

from ernie_cpt.config import ConfigError, config_from_dict, load_config
from ernie_cpt.experiments.compare import DONE_FILE, collect_run, make_plan, plan_runs
from ernie_cpt.experiments.report import (
    PLOTS,
    build_summary,
    log_wandb_summary,
    wandb_tables,
    write_report,
)

TASKS = ["a", "b"]


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def fake_run(
    root: Path,
    schedule: str,
    seed: int,
    scores: list[list[float]],
    stage_tasks: list[list[str]],
    steps_per_stage: int = 4,
) -> Path:
    """A finished run: done marker, eval.jsonl with R = ``scores``, metrics.jsonl."""
    run_dir = root / "runs" / f"{schedule}-seed{seed}"
    run_dir.mkdir(parents=True)
    stages = len(stage_tasks)
    done = {
        "name": run_dir.name,
        "schedule": schedule,
        "seed": seed,
        "steps": stages * steps_per_stage,
        "tokens": 1000 + seed,
        "train_s": 2.0,
        "wall_s": 10.0 + seed,
        "attempts": 1,
        "stage_tasks": stage_tasks,
        "stage_names": [f"stage{i + 1}" for i in range(stages)],
    }
    (run_dir / DONE_FILE).write_text(json.dumps(done))
    evals = [
        {
            "step": i * steps_per_stage,
            "stage": i - 1,
            "metrics": {t: {"accuracy": v, "loss": 1 - v} for t, v in zip(TASKS, row, strict=True)},
        }
        for i, row in enumerate(scores)
    ]
    # a periodic evaluation in the middle of stage 0 is not R's row
    evals.insert(1, {"step": 1, "stage": 0, "metrics": {t: {"accuracy": 0.0} for t in TASKS}})
    write_rows(run_dir / "eval.jsonl", evals)
    metrics = []
    for step in range(1, stages * steps_per_stage + 1):
        stage = (step - 1) // steps_per_stage
        task = stage_tasks[stage][step % len(stage_tasks[stage])]
        metrics.append({"step": step, "stage": stage, "task": task, "losses": {task: 2.0 / step}})
    write_rows(run_dir / "metrics.jsonl", metrics)
    # chance levels: a is 3:1 (majority 0.75), b counts tokens (a masked-token task: n/a)
    report = {"tasks": {"a": {"labels": {"x": 30, "y": 10}}, "b": {"labels": {"tokens": 9}}}}
    (run_dir / "data_report.json").write_text(json.dumps(report))
    return run_dir


def fake_baseline(root: Path, seed: int, score: float, steps: int = 8) -> Path:
    """A finished ``--baseline mlm`` run: one stage training only mlm."""
    run_dir = root / "runs" / f"mlm-only-seed{seed}"
    run_dir.mkdir(parents=True)
    done = {
        "name": run_dir.name,
        "schedule": "continual",
        "baseline": "mlm",
        "seed": seed,
        "steps": steps,
        "tokens": 1000 + seed,
        "train_s": 2.0,
        "wall_s": 10.0,
        "attempts": 1,
        "stage_tasks": [["mlm"]],
        "stage_names": ["stage1"],
    }
    (run_dir / DONE_FILE).write_text(json.dumps(done))
    evals = [
        {"step": 0, "stage": -1, "metrics": {"mlm": {"accuracy": 0.0}}},
        {"step": steps, "stage": 0, "metrics": {"mlm": {"accuracy": score}}},
    ]
    write_rows(run_dir / "eval.jsonl", evals)
    rows = [{"step": k, "stage": 0, "task": "mlm", "losses": {"mlm": 1.0}} for k in range(steps)]
    write_rows(run_dir / "metrics.jsonl", rows)
    return run_dir


CONTINUAL_R = [[0.125, 0.25], [0.75, 0.25], [0.5, 0.875]]


def test_collect_run_reads_r_after_each_stage(tmp_path):
    run_dir = fake_run(tmp_path, "continual", 0, CONTINUAL_R, [["a"], ["b"]])
    run = collect_run(run_dir, TASKS)
    assert run["R"] == CONTINUAL_R
    assert run["intro"] == [1, 2]
    assert run["metrics"] == {"acc": 0.6875, "bwt": -0.25, "fwt": 0.0, "forgetting": 0.25}
    by_loss = collect_run(run_dir, TASKS, metric="loss")  # negated: higher is better
    assert by_loss["R"][0] == [-0.875, -0.75]


def comparison(tmp_path: Path, baseline: bool = False) -> tuple[dict, list[dict]]:
    runs = []
    for seed, shift in ((0, 0.0), (1, 0.125)):
        matrix = [[v + shift for v in row] for row in CONTINUAL_R]
        runs.append(fake_run(tmp_path, "continual", seed, matrix, [["a"], ["b"]]))
        runs.append(fake_run(tmp_path, "multitask", seed, matrix[:2], [["a", "b"]], 8))
    if baseline:
        runs += [fake_baseline(tmp_path, 0, 0.25), fake_baseline(tmp_path, 1, 0.375)]
    collected = [collect_run(r, TASKS) for r in runs]
    for i, run in enumerate(collected):
        run["downstream"] = {
            "polarity": {"metric": "accuracy", "median": 0.5 + i / 100, "scores": [0.5, 0.6]}
        }
        if run["schedule"] == "continual":
            run["downstream_stages"] = {"stage1": {"polarity": {"median": 0.25 * (1 + i)}}}
    plan = {
        "group": "test-group",
        "schedules": ["continual", "multitask"],
        "seeds": 2,
        "config": {
            "schedule": {"iterations_per_task": 4},
            "logging": {"wandb_mode": "offline", "project": "ernie-cpt-test", "entity": None},
        },
    }
    return plan, collected


def test_summary_report_and_plots(tmp_path):
    plan, runs = comparison(tmp_path)
    summary = build_summary(plan, runs, TASKS, "accuracy")
    continual = summary["schedules"]["continual"]
    assert continual["acc"]["mean"] == pytest.approx(0.75)
    assert continual["acc"]["std"] == pytest.approx(math.sqrt(2 * 0.0625**2))
    assert continual["bwt"]["mean"] == -0.25 and continual["bwt"]["std"] == 0.0
    assert continual["R_mean"][0] == [0.1875, 0.3125]
    assert summary["schedules"]["multitask"]["bwt"]["n"] == 0  # undefined for one stage
    assert continual["downstream"]["polarity"]["medians"] == [0.5, 0.52]

    write_report(tmp_path, summary)
    saved = json.loads(
        (tmp_path / "summary.json").read_text(),
        parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"),
    )
    assert set(saved["schedules"]) == {"continual", "multitask"}
    for key in ("acc", "bwt", "fwt", "forgetting", "R_mean", "downstream", "tokens", "wall_s"):
        assert key in saved["schedules"]["continual"], key
    assert saved["schedules"]["multitask"]["bwt"]["mean"] is None
    assert saved["runs"]["continual-seed0"]["R"] == CONTINUAL_R
    report = (tmp_path / "report.md").read_text()
    assert "| schedule | seeds | steps | ACC | BWT | FWT | forgetting |" in report
    # multitask ACC per seed 0.5, 0.625: bootstrap means of two values are 0.5, 0.5625,
    # 0.625 -> the 95% interval is [min, max]
    assert "| multitask | 2 | 8 | 0.562 ± 0.088 [0.500, 0.625] | n/a | n/a | n/a |" in report
    assert (
        "percentile bootstrap" in report
        and "With 2 seed(s) the bootstrap interval is crude" in report
    )
    assert "polarity (median)" in report and "wandb sync" in report
    # continual runs are runs[0] and runs[2]: stage-1 medians 0.25 and 0.75
    assert "| continual | 0.500 ± 0.354 [0.250, 0.750] | 0.510 ± 0.014 [0.500, 0.520] |" in report
    assert "| multitask | - | 0.520 ± 0.014 [0.510, 0.530] |" in report
    # the downstream R matrix carries the same intervals
    assert "| 1: stage1 | 0.500 ± 0.354 [0.250, 0.750] |" in report
    for name in PLOTS:
        data = (tmp_path / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG"), name
        assert f"plots/{name}" in report


def test_wandb_summary_run_is_written_offline(tmp_path, monkeypatch):
    for var, sub in (
        ("WANDB_CACHE_DIR", "c"),
        ("WANDB_CONFIG_DIR", "g"),
        ("WANDB_DATA_DIR", "d"),
    ):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    plan, runs = comparison(tmp_path)
    summary = build_summary(plan, runs, TASKS, "accuracy")
    write_report(tmp_path, summary)
    local = log_wandb_summary(tmp_path, summary, plan)
    assert local.parent == tmp_path / "wandb" and local.name.startswith("offline-run-")
    assert local.name.endswith("summary-" + local.name.split("summary-")[1])
    assert list(local.glob("*.wandb"))
    media = local / "files" / "media"
    for table in ("summary", "runs", "r_matrix", "r_matrix/continual", "r_matrix/multitask"):
        assert list(media.glob(f"table/{table}_*.table.json")), table
    rows = json.loads(next(media.glob("table/summary_*.table.json")).read_text())
    assert rows["columns"][:4] == ["schedule", "seeds", "steps", "acc_mean"]
    assert len(list(media.glob("images/plots/*.png"))) == len(PLOTS)
    assert "WANDB_SERVICE" not in os.environ  # training subprocesses must not inherit it
    again = log_wandb_summary(tmp_path, summary, plan)  # a rerun replaces the summary run
    assert [p.name for p in (tmp_path / "wandb").glob("offline-run-*")] == [again.name]


def test_paired_differences_chance_and_baseline_in_the_report(tmp_path):
    plan, runs = comparison(tmp_path, baseline=True)
    summary = build_summary(plan, runs, TASKS, "accuracy")
    assert set(summary["schedules"]) == {"continual", "multitask"}
    assert summary["baselines"]["mlm-only"]["seeds"] == [0, 1]
    # chance from the runs' data_report.json: a 30 of 40, b counts tokens
    assert summary["chance"]["a"]["value"] == 0.75
    assert math.isnan(summary["chance"]["b"]["value"])
    paired = {(p["first"], p["second"], p["quantity"]): p for p in summary["paired"]}
    # final score of a: continual 0.5, 0.625; multitask 0.75, 0.875 -> -0.25 on both seeds
    a = paired["continual", "multitask", "score/a"]
    assert a["differences"] == [-0.25, -0.25] and a["resolved"] is True
    # downstream medians (0.5 + i / 100 by position): continual runs 0, 2 (0.50, 0.52),
    # mlm-only 4, 5 (0.54, 0.55): continual - mlm-only = -0.04, -0.03
    down = paired["continual", "mlm-only", "downstream/polarity"]
    assert down["differences"] == pytest.approx([-0.04, -0.03])
    assert ("continual", "mlm-only", "acc") not in paired  # a baseline's ACC is not comparable

    write_report(tmp_path, summary)
    report = (tmp_path / "report.md").read_text()
    assert (
        "- ACC: continual - multitask = +0.1875, 95% CI [+0.1875, +0.1875] (crude: few " in report
    )
    assert "over 2 seeds: resolved, continual higher." in report
    assert (
        "| continual - multitask | -0.250 [-0.250, -0.250]* | +0.625 [+0.625, +0.625]* |" in report
    )
    assert "| chance (majority class) | 0.750 | n/a |" in report
    # continual's final a is 0.5625 on average: 0.5625 - 0.75
    assert "| final - chance | -0.188 | n/a |" in report
    assert "a: majority class (train labels); b: n/a (not a classification" in report
    # the baseline: held-out mlm 0.25, 0.375; its row in the summary and its own table
    assert "| mlm-only | 2 | 8 | mlm | 0.312 ± 0.088 [0.250, 0.375] | 1000 ± 1 |" in report
    assert (
        "| mlm-only (baseline) | 2 | 8 | - | - | - | - | 0.545 ± 0.007 [0.540, 0.550] |" in report
    )
    assert (
        "downstream polarity: continual - mlm-only = -0.0350, 95% CI [-0.0400, -0.0300]" in report
    )


def test_wandb_tables_label_a_baseline_run_by_its_variant_and_its_own_tasks(tmp_path):
    # a baseline run scores only its own task: its R rows are shorter than the schedules'
    plan, runs = comparison(tmp_path, baseline=True)
    tables = wandb_tables(build_summary(plan, runs, TASKS, "accuracy"))
    long_columns, long_rows = tables["r_matrix"]
    baseline_rows = [row for row in long_rows if row[0] == "mlm-only"]
    assert {(row[1], row[4]) for row in baseline_rows} == {(0, "mlm"), (1, "mlm")}
    assert len(baseline_rows) == 4  # 2 seeds x (initial + 1 stage), one task each
    run_columns, run_rows = tables["runs"]
    kinds = {row[0]: row[run_columns.index("schedule")] for row in run_rows}
    assert kinds["mlm-only-seed0"] == "mlm-only" and kinds["continual-seed0"] == "continual"


def test_baseline_plan_trains_only_mlm_at_equal_steps(tmp_path):
    tree = json.loads(json.dumps(TINY_CONFIG))
    tree["tasks"] = {"mlm": {"mask_probability": 0.2}, "sentence_distance": {}}
    config = config_from_dict(tree)
    plan = make_plan(config, ["continual", "cmtl"], 2, None, tmp_path, baseline="mlm")
    runs = plan_runs(plan)
    assert [r.name for r in runs] == [
        "continual-seed0",
        "cmtl-seed0",
        "mlm-only-seed0",
        "continual-seed1",
        "cmtl-seed1",
        "mlm-only-seed1",
    ]
    baseline = runs[2]
    assert baseline.total_steps == 24  # the schedules' 2 tasks x 12 steps, in one stage
    assert (baseline.train_seed, baseline.schedule_seed) == (runs[0].train_seed, 0)
    overrides = baseline.overrides(plan["group"])
    assert 'tasks={"mlm": {"mask_probability": 0.2}}' in overrides  # its options kept
    assert "schedule.iterations_per_task=24" in overrides
    assert "schedule.kind=continual" in overrides
    assert 'logging.job_type="mlm-only"' in overrides
    resolved = load_config(None, [f"{k}" for k in overrides if not k.startswith("logging.")])
    assert list(resolved.tasks) == ["mlm"]
    with pytest.raises(ConfigError, match="did you mean"):
        make_plan(config, ["continual"], 1, None, tmp_path, baseline="mlmm")
