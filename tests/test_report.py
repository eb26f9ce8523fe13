"""The comparison report from hand-made run directories: summary.json, report.md, PNGs, W&B."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from ernie_cpt.experiments.compare import DONE_FILE, collect_run
from ernie_cpt.experiments.report import PLOTS, build_summary, log_wandb_summary, write_report

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


def comparison(tmp_path: Path) -> tuple[dict, list[dict]]:
    runs = []
    for seed, shift in ((0, 0.0), (1, 0.125)):
        matrix = [[v + shift for v in row] for row in CONTINUAL_R]
        runs.append(fake_run(tmp_path, "continual", seed, matrix, [["a"], ["b"]]))
        runs.append(fake_run(tmp_path, "multitask", seed, matrix[:2], [["a", "b"]], 8))
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
    assert "| multitask | 2 | 8 | 0.562 ± 0.088 | n/a | n/a | n/a |" in report
    assert "polarity (median)" in report and "wandb sync" in report
    # continual runs are runs[0] and runs[2]: stage-1 medians 0.25 and 0.75
    assert "| continual | 0.500 ± 0.354 | 0.510 ± 0.014 |" in report
    assert "| multitask | - | 0.520 ± 0.014 |" in report
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
