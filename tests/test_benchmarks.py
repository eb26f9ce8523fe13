"""The prepared GPU benchmark runs end to end on CPU at a tiny size (``--smoke``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli_env

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_gpu_throughput_smoke_runs_on_cpu(tiny_config):
    config = tiny_config(train={"threads": 1})
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/gpu_throughput.py",
            "--smoke",
            "--no-compile",
            "--config",
            str(config),
        ],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    table = lines[lines.index(next(x for x in lines if x.startswith("variant"))) + 1 :]
    assert [row.split()[:3] for row in table] == [
        ["mlm-only", "False", "dense"],
        ["mixture", "False", "dense"],
        ["mlm-only", "False", "sparse"],
        ["mixture", "False", "sparse"],
    ]
    assert all(float(row.split()[3]) > 0 for row in table)  # tokens/s measured
    assert all(row.split()[5] == "n/a" for row in table)  # no peak FLOP/s known on CPU


def test_task_replay_times_every_task_and_replays_the_same_output(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    monkeypatch.chdir(REPO)
    import task_replay

    tasks = ["sentence_reordering", "capitalization"]
    calls = task_replay.capture(tmp_path, 1, tasks)
    assert calls and all(call[2].split == "train" for call in calls)
    (seconds, first), (_, second) = task_replay.replay(calls), task_replay.replay(calls)
    assert sorted(seconds) == sorted(tasks) and all(value > 0 for value in seconds.values())
    assert first == second  # the same calls give the same bytes, round after round
    # the replay restored each task's own build_examples after timing it
    assert all("build_examples" not in vars(task) for task in calls[0][1].values())
