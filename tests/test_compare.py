"""The comparison harness: plan, resume, matched compute, and an end-to-end tiny comparison."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import REPO, TINY_CONFIG, cli_env, polarity_tsv, run_cli

from ernie_cpt.config import ConfigError, config_from_dict
from ernie_cpt.experiments.compare import (
    ATTEMPTS_FILE,
    DONE_FILE,
    PLAN_FILE,
    make_plan,
    open_plan,
    parse_schedules,
    plan_differences,
    plan_runs,
    stage_evaluations,
)


def tiny() -> object:
    return config_from_dict(json.loads(json.dumps(TINY_CONFIG)))


def test_parse_schedules():
    assert parse_schedules("continual, cmtl") == ["continual", "cmtl"]
    with pytest.raises(ConfigError, match=r"did you mean [\"']continual[\"']"):
        parse_schedules("continuel")
    with pytest.raises(ConfigError, match="twice"):
        parse_schedules("cmtl,cmtl")


def test_plan_is_seed_major_with_matched_steps_and_seeds(tmp_path):
    plan = make_plan(tiny(), ["continual", "multitask", "cmtl"], 2, None, tmp_path / "cmp")
    runs = plan_runs(plan)
    assert [r.name for r in runs] == [
        "continual-seed0",
        "multitask-seed0",
        "cmtl-seed0",
        "continual-seed1",
        "multitask-seed1",
        "cmtl-seed1",
    ]
    assert {r.total_steps for r in runs} == {24}  # 2 tasks x 12 iterations each
    assert [(r.train_seed, r.schedule_seed) for r in runs[::3]] == [(42, 0), (43, 1)]
    overrides = runs[2].overrides(plan["group"])
    assert "schedule.kind=cmtl" in overrides and "train.seed=42" in overrides
    assert f'logging.group="{plan["group"]}"' in overrides
    assert 'logging.job_type="cmtl"' in overrides
    assert not any(o.startswith("data.") for o in overrides)  # same data for every run
    assert plan["group"].startswith("cmp-")
    assert make_plan(tiny(), ["continual"], 1, "mine", tmp_path)["group"] == "mine"


def test_a_different_plan_is_refused(tmp_path):
    plan = make_plan(tiny(), ["continual", "cmtl"], 2, None, tmp_path)
    open_plan(tmp_path, plan, {})
    assert json.loads((tmp_path / PLAN_FILE).read_text())["runs"] == plan["runs"]
    moved = make_plan(tiny(), ["continual", "cmtl"], 2, None, tmp_path / "moved")
    assert open_plan(tmp_path, moved, {}, group_given=False)["group"] == plan["group"]
    with pytest.raises(ConfigError, match="group"):
        open_plan(tmp_path, make_plan(tiny(), ["continual", "cmtl"], 2, "other", tmp_path), {})
    fewer = make_plan(tiny(), ["continual", "cmtl"], 1, plan["group"], tmp_path)
    assert plan_differences(plan, fewer) == ["seeds", "runs"]
    with pytest.raises(ConfigError, match="different comparison.*seeds"):
        open_plan(tmp_path, fewer, {})  # drops runs: refused
    with pytest.raises(ConfigError, match="different comparison.*schedules"):
        open_plan(tmp_path, make_plan(tiny(), ["continual"], 3, plan["group"], tmp_path), {})
    changed = config_from_dict({**json.loads(json.dumps(TINY_CONFIG)), "train": {"lr": 0.5}})
    with pytest.raises(ConfigError, match="config.train"):
        open_plan(
            tmp_path, make_plan(changed, ["continual", "cmtl"], 2, plan["group"], tmp_path), {}
        )


def test_a_plan_that_only_adds_runs_extends_the_saved_one(tmp_path):
    plan = make_plan(tiny(), ["continual", "cmtl"], 2, "g", tmp_path)
    open_plan(tmp_path, plan, {"note": "kept"})
    more = make_plan(tiny(), ["continual", "cmtl"], 3, "g", tmp_path, baseline="mlm")
    extended = open_plan(tmp_path, more, {})
    saved = json.loads((tmp_path / PLAN_FILE).read_text())
    assert extended["runs"] == more["runs"] == saved["runs"] and saved["seeds"] == 3
    assert saved["note"] == "kept"  # the first invocation's extra keys stay
    assert all(run in saved["runs"] for run in plan["runs"])  # finished runs unchanged
    names = [r.name for r in plan_runs(extended)]
    assert names[:3] == ["continual-seed0", "cmtl-seed0", "mlm-only-seed0"]
    assert len(names) == 9 and names[-1] == "mlm-only-seed2"
    assert open_plan(tmp_path, more, {})["runs"] == more["runs"]  # the same again: no change


def test_stage_evaluations_take_the_last_row_of_each_stage():
    rows = [
        {"step": 0, "stage": -1, "metrics": {"a": {"accuracy": 0.0}}},
        {"step": 3, "stage": 0, "metrics": {"a": {"accuracy": 0.25}}},
        {"step": 6, "stage": 0, "metrics": {"a": {"accuracy": 0.5}}},
        {"step": 9, "stage": 1, "metrics": {"a": {"accuracy": 0.75}}},
    ]
    assert [r["step"] for r in stage_evaluations(rows, 2)] == [0, 6, 9]
    with pytest.raises(ValueError, match=r"stage\(s\) \[2\]"):
        stage_evaluations(rows, 3)


# ------------------------------------------------------------------------------ end to end
SCHEDULES = ["continual", "cmtl"]
SHRINK = ["--set", "schedule.iterations_per_task=6"]  # 12 steps per run, stage ends at 6 / 4


def compare_args(config: Path, out: Path, downstream: Path, seeds: int = 2) -> list[str]:
    args = ["compare", str(config), "--schedules", ",".join(SCHEDULES), "--seeds", str(seeds)]
    args += ["--output-dir", str(out), *SHRINK, "--progress-every", "1", "--threads", "1"]
    args += ["--downstream", str(downstream), "--downstream-seeds", "2", "--downstream-stages"]
    args += ["--downstream-epochs", "1", "--downstream-lr", "1e-3", "--downstream-threads", "1"]
    return args


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, cache_dir):
    """A comparison killed in its first run (fault injection), then resumed to the end."""
    import yaml

    base = tmp_path_factory.mktemp("compare")
    tree = json.loads(json.dumps(TINY_CONFIG))
    tree["data"]["cache_dir"] = str(cache_dir)
    config = base / "config.yaml"
    config.write_text(yaml.safe_dump(tree))
    downstream = polarity_tsv(base / "polarity.tsv", 120)
    out = base / "cmp"
    args = compare_args(config, out, downstream)
    killed = run_cli(*args, env=cli_env(ERNIE_CPT_FAULT="after_step:7"), check=False)
    resumed = run_cli(*args, env=cli_env())
    return {"args": args, "out": out, "killed": killed, "resumed": resumed}


@pytest.mark.slow
def test_killed_comparison_resumes_the_unfinished_run(comparison):
    killed, resumed, out = comparison["killed"], comparison["resumed"], comparison["out"]
    assert killed.returncode == 1, killed.stderr[-2000:]
    assert "run 1/4: continual seed 0 failed" in killed.stderr
    assert "rerun the same command" in killed.stderr
    assert "run 1/4: continual seed 0 (12 steps" in resumed.stderr
    assert "resuming from step-00000006" in resumed.stderr  # continual's stage end
    run_dir = out / "runs" / "continual-seed0"
    assert "resumed from" in (run_dir / "train.log").read_text()
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert steps == list(range(1, 13))
    assert len((run_dir / ATTEMPTS_FILE).read_text().splitlines()) == 2


@pytest.mark.slow
def test_every_run_trained_the_same_steps_data_and_seeds(comparison):
    import yaml

    out = comparison["out"]
    plan = json.loads((out / PLAN_FILE).read_text())
    assert [r["name"] for r in plan["runs"]] == [
        "continual-seed0",
        "cmtl-seed0",
        "continual-seed1",
        "cmtl-seed1",
    ]
    tokens = {}
    for run in plan["runs"]:
        run_dir = out / "runs" / run["name"]
        done = json.loads((run_dir / DONE_FILE).read_text())
        assert done["steps"] == 12 and (run_dir / "export" / "config.json").exists()
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["schedule"]["kind"] == run["schedule"]
        assert config["train"]["seed"] == 42 + run["seed"]
        assert config["data"]["seed"] == 1234  # the same data for every run
        assert config["logging"]["group"] == plan["group"]
        assert config["logging"]["job_type"] == run["schedule"]
        assert list((run_dir / "wandb").glob("offline-run-*"))
        tokens.setdefault(run["seed"], set()).add(done["tokens"])
    # same seed -> the same batches of each task, whatever the schedule
    assert all(len(v) == 1 for v in tokens.values())


@pytest.mark.slow
def test_summary_report_plots_and_wandb_group(comparison):
    out = comparison["out"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["schedules"]) == set(SCHEDULES)
    assert summary["tasks"] == ["mlm", "sentence_distance"]
    for kind in SCHEDULES:
        s = summary["schedules"][kind]
        for key in ("acc", "bwt", "fwt", "forgetting"):
            assert s[key]["n"] == 2 and math.isfinite(s[key]["mean"]), (kind, key)
        assert len(s["R_mean"]) == 3 and len(s["R_mean"][0]) == 2  # initial + 2 stages
        assert s["intro"] == [1, 2]
        assert math.isfinite(s["downstream"]["polarity"]["median"]["mean"])
        assert len(s["downstream"]["polarity"]["scores"]) == 2
    # every stage-end checkpoint is kept, so each schedule has a downstream score per stage
    for schedule in ("continual", "cmtl"):
        stage1 = summary["schedules"][schedule]["downstream_stages"]["polarity"]["stage1"]
        assert stage1["n"] == 2 and math.isfinite(stage1["mean"])
    assert "was pruned" not in comparison["resumed"].stderr
    for name, run in summary["runs"].items():
        # two tasks introduced at stages 1 and 2: the spec's formulas written out by hand
        # (R[0] = initial model, R[i] = after stage i; task j is introduced at stage j+1)
        R = run["R"]
        assert run["intro"] == [1, 2]
        expected = {
            "acc": (R[2][0] + R[2][1]) / 2,
            "bwt": R[2][0] - R[1][0],
            "fwt": R[1][1] - R[0][1],
            "forgetting": R[1][0] - R[2][0],
        }
        assert run["metrics"] == pytest.approx(expected), name
    report = (out / "report.md").read_text()
    assert "| continual | 2 | 12 |" in report and "| cmtl | 2 | 12 |" in report
    assert "### polarity: median after each stage" in report
    for name in ("loss_curves", "r_matrix", "forgetting", "downstream"):
        assert (out / "plots" / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    assert list((out / "wandb").glob("offline-run-*-summary-*"))
    assert "| schedule | seeds | steps | ACC |" in comparison["resumed"].stdout


@pytest.mark.slow
def test_rerun_trains_only_the_incomplete_run(comparison, tmp_path):
    import shutil

    # work on a copy: the module's comparison stays as the other tests expect it
    out = tmp_path / "cmp"
    shutil.copytree(comparison["out"], out)
    args = [str(out) if a == str(comparison["out"]) else a for a in comparison["args"]]
    assert str(out) in args
    victim = out / "runs" / "cmtl-seed1"
    (victim / DONE_FILE).unlink()
    shutil.rmtree(victim / "export")
    shutil.rmtree(victim / "checkpoints" / "step-00000012")  # as if killed after step 10
    others = [p for p in (out / "runs").iterdir() if p != victim]
    before = {p.name: (p / DONE_FILE).stat().st_mtime_ns for p in others}
    result = run_cli(*args, env=cli_env())
    assert result.stderr.count("finished before, skipped") == 3
    assert "run 4/4: cmtl seed 1 (12 steps" in result.stderr
    evaluated = [line for line in result.stderr.splitlines() if "downstream polarity" in line]
    assert evaluated and all("cmtl-seed1" in line for line in evaluated)
    assert {p.name: (p / DONE_FILE).stat().st_mtime_ns for p in others} == before
    assert len((victim / ATTEMPTS_FILE).read_text().splitlines()) == 2
    assert len((out / "runs" / "cmtl-seed0" / ATTEMPTS_FILE).read_text().splitlines()) == 1
    assert "resumed from" in (victim / "train.log").read_text()
    # fewer seeds would drop finished runs: refused (more seeds would extend the plan)
    refused = run_cli(*args[:4], "--seeds", "1", *args[6:], env=cli_env(), check=False)
    assert refused.returncode == 2 and "different comparison" in refused.stderr


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_killed_harness_takes_its_training_run_down_and_resumes(tmp_path, tiny_config):
    import signal
    import subprocess
    import sys
    import time

    args = ["compare", str(tiny_config()), "--schedules", "continual", "--seeds", "1"]
    args += ["--output-dir", str(tmp_path / "cmp"), "--no-wandb", "--threads", "1"]
    harness = subprocess.Popen(
        [sys.executable, "-m", "ernie_cpt.cli", *args],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children = Path(f"/proc/{harness.pid}/task/{harness.pid}/children")
    deadline, child = time.monotonic() + 120, None
    while child is None and time.monotonic() < deadline and harness.poll() is None:
        found = children.read_text().split() if children.exists() else []
        child = int(found[0]) if found else None
        time.sleep(0.1)
    assert child is not None, "the harness started no training subprocess"
    harness.send_signal(signal.SIGKILL)
    harness.wait()
    status = Path(f"/proc/{child}/status")
    deadline = time.monotonic() + 60
    while status.exists() and time.monotonic() < deadline:
        if "State:\tZ" in status.read_text(errors="replace"):
            break  # dead, not yet reaped
        time.sleep(0.1)
    assert not status.exists() or "State:\tZ" in status.read_text(errors="replace")
    # killed at once: a surviving child would have finished the run and exported it
    assert not (tmp_path / "cmp" / "runs" / "continual-seed0" / "export").exists()
    result = run_cli(*args, env=cli_env())
    assert "run 1/1: continual seed 0 (24 steps" in result.stderr
    assert (tmp_path / "cmp" / "runs" / "continual-seed0" / DONE_FILE).exists()
