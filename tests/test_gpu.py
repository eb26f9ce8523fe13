"""GPU checks (skipped without CUDA, see conftest): ZeRO 1-2 with idle heads in fp32 and
bf16 against ZeRO 0, and the MLM throughput benchmark. Run on a GPU machine with

    .venv/bin/python -m pytest -m gpu tests/test_gpu.py
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO, cli_env, losses_by_step, run_cli, tiny_tree

# Stated tolerances (per-step loss, absolute; losses are ~6.4 for mlm, ~1.1 for
# sentence_distance). fp32: ZeRO 1-2 do the same arithmetic as ZeRO 0, only the reduction
# order of CUDA kernels differs. bf16: DeepSpeed keeps bf16 weights and activations, so
# ~3 significant digits.
GPU_FP32_TOLERANCE = 1e-3
GPU_BF16_TOLERANCE = 5e-2


def write_config(path, cache_dir, **train) -> str:
    import yaml

    tree = tiny_tree(data={"cache_dir": str(cache_dir)}, train=train)
    path.write_text(yaml.safe_dump(tree))
    return str(path)


@pytest.fixture(scope="module")
def gpu_reference(tmp_path_factory, cache_dir):
    """ZeRO 0, fp32, 10 steps on the GPU (crosses the stage boundary at step 8)."""
    base = tmp_path_factory.mktemp("gpu-reference")
    config = write_config(base / "config.yaml", cache_dir)
    run_cli("train", config, "--output-dir", str(base / "run"), "--max-steps", "10")
    return config, base / "run"


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize(
    ("zero_stage", "precision"), [(1, "fp32"), (2, "fp32"), (1, "bf16"), (2, "bf16")]
)
def test_zero_stages_with_idle_heads_on_gpu(gpu_reference, tmp_path, zero_stage, precision):
    # steps 1-8 train mlm only: sentence_distance's head is idle, then used in steps 9-10
    config, reference = gpu_reference
    run_dir = tmp_path / "run"
    run_cli(
        "train",
        config,
        "--output-dir",
        str(run_dir),
        "--max-steps",
        "10",
        "--set",
        f"train.zero_stage={zero_stage}",
        "--set",
        f"train.precision={precision}",
    )
    ours, expected = losses_by_step(run_dir), losses_by_step(reference)
    assert sorted(ours) == list(range(1, 11)) and "sentence_distance" in ours[10]
    tolerance = GPU_FP32_TOLERANCE if precision == "fp32" else GPU_BF16_TOLERANCE
    for step, losses in ours.items():
        assert losses.keys() == expected[step].keys(), step
        for task, loss in losses.items():
            assert loss == pytest.approx(expected[step][task], abs=tolerance), (step, task)
    assert (run_dir / "checkpoints" / "step-00000010" / "model.safetensors").exists()


@pytest.mark.gpu
@pytest.mark.slow
def test_mlm_throughput_benchmark_runs_on_gpu(tmp_path, cache_dir):
    config = write_config(tmp_path / "config.yaml", cache_dir)
    result = subprocess.run(
        [sys.executable, "benchmarks/mlm_throughput.py", "--config", config]
        + ["--rounds", "2", "--steps", "5", "--warmup", "2"],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "same tokens: True" in result.stdout
    assert "ratio ernie-cpt/hf = " in result.stdout


IMPORT_ALL = """
import runpy, sys
for path in sys.argv[1:]:
    module = runpy.run_path(path, run_name="imported")  # module code, not main()
    assert callable(module.get("main")), path
print("imported", len(sys.argv) - 1)
"""


@pytest.mark.slow
def test_benchmark_scripts_import(tmp_path):
    # CPU: the benchmarks import the trainer's internals, so a move breaks them silently;
    # one interpreter imports them all (a --help subprocess each paid torch's import 4 times)
    scripts = sorted(str(p) for p in (REPO / "benchmarks").glob("*.py"))
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, *scripts],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["imported", str(len(scripts))]
