"""launch.sh: the command it builds on CPU, on GPUs and with a hostfile."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import REPO


def launch(*args, gpus=None, dry=True):
    env = {**os.environ, "PYTHON": sys.executable, "LAUNCH_DRY_RUN": "1" if dry else "0"}
    if gpus is not None:
        env["ERNIE_CPT_GPUS"] = str(gpus)
    return subprocess.run(
        ["bash", str(REPO / "launch.sh"), *args], cwd=REPO, env=env, capture_output=True, text=True
    )


def test_cpu_machine_runs_the_single_process_path():
    result = launch("configs/demo.yaml", "--set", "train.lr=1e-4", gpus=0)
    assert result.returncode == 0
    assert result.stdout.strip() == (
        f"+ {sys.executable} -m ernie_cpt.cli train configs/demo.yaml --output-dir runs/demo --set train.lr=1e-4"
    )


def test_gpus_and_hostfile_use_the_deepspeed_launcher(tmp_path):
    result = launch("configs/base.yaml", "--num-gpus", "4", "--output-dir", "runs/x", gpus=8)
    assert (
        f"{sys.executable} -m deepspeed.launcher.runner --num_gpus 4 --module ernie_cpt.cli train"
        in result.stdout
    )
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1 slots=8\nnode2 slots=8\n")
    result = launch("configs/base.yaml", "--hostfile", str(hostfile), gpus=8)
    assert f"--hostfile {hostfile} --module ernie_cpt.cli train configs/base.yaml" in result.stdout


@pytest.mark.parametrize(
    "args", [(), ("missing.yaml",), ("configs/demo.yaml", "--hostfile", "/nonexistent")]
)
def test_bad_invocations_fail_clearly(args):
    result = launch(*args, gpus=0)
    assert result.returncode == 2
