"""End-to-end runs of the CLI on a tiny config: train, kill, resume, export, bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import REPO, cli_env, evals, losses_by_step, metrics, run_cli, tiny_tree

from ernie_cpt.training.engine import free_port

pytestmark = pytest.mark.slow

# ZeRO 1-3 partition optimizer state, gradients and parameters but do the same arithmetic
# in fp32: measured differences from ZeRO 0 are ~5e-7 on losses of ~6.3 (reduction order).
ZERO_FP32_TOLERANCE = 1e-5
# bf16 autocast against fp32 at ZeRO 0: measured up to 7e-4 over 10 steps.
BF16_TOLERANCE = 5e-3


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, cache_dir):
    """One uninterrupted 24-step run (shared by the tests that compare against it)."""
    import yaml

    tree = tiny_tree(data={"cache_dir": str(cache_dir)})
    base = tmp_path_factory.mktemp("reference")
    config = base / "config.yaml"
    config.write_text(yaml.safe_dump(tree))
    run_dir = base / "run"
    secret = "sk-test-0123456789-do-not-log"
    run_cli("train", str(config), "--output-dir", str(run_dir), env=cli_env(WANDB_API_KEY=secret))
    return config, run_dir, secret


def test_run_directory_holds_metrics_checkpoints_wandb_and_export(reference_run):
    config, run_dir, _ = reference_run
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 25))
    assert {r["stage"] for r in rows} == {0, 1}
    for key in ("step", "stage", "losses", "lr", "tokens", "tokens_per_s", "weights"):
        assert key in rows[0]
    # stage 2 trains sentence_distance with mlm attached to the same forward
    assert any(set(r["losses"]) == {"mlm", "sentence_distance"} for r in rows if r["stage"] == 1)
    # checkpoints: keep_checkpoints=3 newest, plus the stage ends (8, 24); pointer names the last
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert kept == ["step-00000008", "step-00000015", "step-00000020", "step-00000024"]
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-00000024"
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline
    wandb_file = next(offline[0].glob("*.wandb")).read_bytes()
    for key in (
        b"train/mlm/loss",
        b"train/sentence_distance/loss",
        b"schedule/stage_end",
        b"eval/mlm/accuracy",
    ):
        assert key in wandb_file, key
    rows = evals(run_dir)
    assert [e["stage"] for e in rows] == [-1, 0, 1]
    assert set(rows[0]["metrics"]) == {"mlm", "sentence_distance"}


def test_losses_fall_for_both_tasks(reference_run):
    # The held-out losses (the same fixed batches at every evaluation) after each stage:
    # initial (stage -1), after stage 1 (mlm only), after stage 2 (mlm + sentence_distance).
    _, run_dir, _ = reference_run
    initial, after_mlm, final = (row["metrics"] for row in evals(run_dir))
    assert final["mlm"]["loss"] < after_mlm["mlm"]["loss"] < initial["mlm"]["loss"]
    # sentence_distance is trained in stage 2 only: its loss falls there, below the start
    assert final["sentence_distance"]["loss"] < after_mlm["sentence_distance"]["loss"]
    assert final["sentence_distance"]["loss"] < initial["sentence_distance"]["loss"]
    # and the training losses of mlm fall too (first 4 steps against the last 4)
    rows = metrics(run_dir)
    first_mlm = [r["losses"]["mlm"] for r in rows[:4]]
    last_mlm = [r["losses"]["mlm"] for r in rows[-4:] if "mlm" in r["losses"]]
    assert sum(last_mlm) / len(last_mlm) < sum(first_mlm) / len(first_mlm)


def test_export_loads_with_automodel_offline(reference_run):
    import torch
    from transformers import AutoModel, AutoTokenizer

    _, run_dir, _ = reference_run
    export = run_dir / "export"
    model = AutoModel.from_pretrained(str(export), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(export), local_files_only=True)
    assert model.config.use_task_id
    info = json.loads((export / "task_ids.json").read_text())
    assert info["task_ids"] == {"mlm": 0, "sentence_distance": 1}
    assert (export / "heads.safetensors").exists() and (export / "model.safetensors").exists()
    batch = tokenizer("Paris is a city.", return_tensors="pt", return_token_type_ids=True)
    out = model(**batch, task_type_ids=torch.ones_like(batch["input_ids"]))
    assert out.last_hidden_state.shape[-1] == 32
    # the export holds the last checkpoint's weights, tensor by tensor: the checkpoint's
    # "model.encoder.*" are the encoder's, its "model.heads.<task>.*" the heads' (the mlm
    # decoder is tied to the word embeddings and stored once, in neither heads file)
    from safetensors.torch import load_file

    checkpoint = load_file(str(run_dir / "checkpoints" / "step-00000024" / "model.safetensors"))
    encoder = load_file(str(export / "model.safetensors"))
    heads = load_file(str(export / "heads.safetensors"))
    expected_encoder = {
        k.removeprefix("model.encoder."): v
        for k, v in checkpoint.items()
        if k.startswith("model.encoder.")
    }
    expected_heads = {
        k.removeprefix("model.heads."): v
        for k, v in checkpoint.items()
        if k.startswith("model.heads.")
    }
    # model.safetensors is an ErnieForMaskedLM: the encoder under "ernie.*" and the mlm head
    # under "cls.predictions.*" (its decoder weight tied to the word embeddings, not stored)
    mlm_head = {
        "cls.predictions.transform.dense.weight": "mlm.dense.weight",
        "cls.predictions.transform.dense.bias": "mlm.dense.bias",
        "cls.predictions.transform.LayerNorm.weight": "mlm.layer_norm.weight",
        "cls.predictions.transform.LayerNorm.bias": "mlm.layer_norm.bias",
        "cls.predictions.bias": "mlm.decoder.bias",
    }
    assert sorted(encoder) == sorted([f"ernie.{k}" for k in expected_encoder] + list(mlm_head))
    assert sorted(heads) == sorted(expected_heads)
    for key, value in encoder.items():
        if key in mlm_head:
            assert torch.equal(value, expected_heads[mlm_head[key]]), key
        else:
            assert torch.equal(value, expected_encoder[key.removeprefix("ernie.")]), key
    for key, value in heads.items():
        assert torch.equal(value, expected_heads[key]), key
    loaded = model.state_dict()
    for key, value in expected_encoder.items():
        assert torch.equal(loaded[key], value), key
    # the CLI export of the same run gives the same weights
    again = run_dir.parent / "export-cli"
    run_cli("export", str(run_dir), str(again))
    b = load_file(str(again / "model.safetensors"))
    assert encoder.keys() == b.keys() and all(torch.equal(encoder[k], b[k]) for k in encoder)


def test_api_key_never_written(reference_run):
    _, run_dir, secret = reference_run
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"secret found in {path}"


def test_sigkill_and_resume_is_bitwise_equal_across_a_stage_boundary(reference_run, tmp_path):
    config, reference, _ = reference_run
    run_dir = tmp_path / "killed"
    killed = run_cli(
        "train",
        str(config),
        "--output-dir",
        str(run_dir),
        env=cli_env(ERNIE_CPT_FAULT="after_step:7"),
        check=False,
    )
    assert killed.returncode == -9
    assert max(losses_by_step(run_dir)) == 7  # last checkpoint: step 5; the stage ends at 8
    resumed = run_cli("train", str(config), "--output-dir", str(run_dir), "--resume", "must")
    assert "resumed from" in resumed.stderr and "step-00000005" in resumed.stderr
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, 25))  # each step once
    assert losses_by_step(run_dir) == losses_by_step(reference)


def test_kill_while_saving_leaves_a_partial_checkpoint_that_is_skipped(reference_run, tmp_path):
    config, reference, _ = reference_run
    run_dir = tmp_path / "killed-in-save"
    killed = run_cli(
        "train",
        str(config),
        "--output-dir",
        str(run_dir),
        env=cli_env(ERNIE_CPT_FAULT="in_save:10"),
        check=False,
    )
    assert killed.returncode == -9
    assert (run_dir / "checkpoints" / ".tmp-step-00000010").is_dir()
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-00000008"
    resumed = run_cli("train", str(config), "--output-dir", str(run_dir))
    assert "partial checkpoint" in resumed.stderr
    assert losses_by_step(run_dir) == losses_by_step(reference)


def test_corrupt_newest_checkpoint_is_named_and_older_one_used(reference_run, tmp_path):
    config, reference, _ = reference_run
    run_dir = tmp_path / "corrupt"
    run_cli("train", str(config), "--output-dir", str(run_dir), "--max-steps", "10")
    weights = run_dir / "checkpoints" / "step-00000010" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16] + b"\0" * 16)
    resumed = run_cli("train", str(config), "--output-dir", str(run_dir))
    assert "skipping checkpoint" in resumed.stderr and "step-00000010" in resumed.stderr
    assert "checksum mismatch" in resumed.stderr
    assert "resumed from" in resumed.stderr and "step-00000008" in resumed.stderr
    assert losses_by_step(run_dir) == losses_by_step(reference)


def test_resume_must_without_checkpoint_fails_and_auto_says_fresh(tiny_config, tmp_path):
    config = tiny_config()
    result = run_cli(
        "train",
        str(config),
        "--output-dir",
        str(tmp_path / "empty"),
        "--resume",
        "must",
        check=False,
    )
    assert result.returncode != 0
    assert "no valid checkpoint" in result.stderr
    fresh = run_cli(
        "train", str(config), "--output-dir", str(tmp_path / "fresh"), "--max-steps", "1"
    )
    assert "starting fresh" in fresh.stderr


def test_resume_with_incompatible_config_is_refused_with_keys(reference_run, tmp_path, tiny_config):
    config, _, _ = reference_run
    run_dir = tmp_path / "incompatible"
    run_cli("train", str(config), "--output-dir", str(run_dir), "--max-steps", "5")
    other = run_cli(
        "train",
        str(config),
        "--output-dir",
        str(run_dir),
        "--set",
        "train.micro_batch_size=8",
        "--set",
        "tasks.mlm.mask_probability=0.2",
        check=False,
    )
    assert other.returncode != 0
    assert "train.micro_batch_size" in other.stderr and "tasks.mlm.mask_probability" in other.stderr


def test_bad_inputs_prepare_and_train_with_every_skip_counted(tiny_config, tmp_path):
    corpus = tmp_path / "bad.jsonl"
    good = " ".join(f"Sentence number {i} talks about topic {i % 5}." for i in range(12))
    lines = [
        json.dumps({"id": "good-1", "text": good}).encode(),
        json.dumps({"id": "good-2", "text": good.replace("topic", "subject")}).encode(),
        json.dumps({"id": "good-3", "text": good.replace("Sentence", "Line")}).encode(),
        json.dumps({"id": "empty", "text": ""}).encode(),
        json.dumps({"id": "blank", "text": "   \n\t  "}).encode(),
        json.dumps({"id": "one", "text": "Only one sentence here."}).encode(),
        json.dumps({"id": "nofield", "body": "The text field is missing."}).encode(),
        b'{"id": "badutf8", "text": "Broken \xff\xfe bytes here. And a second sentence."}',
        json.dumps({"id": "long", "text": "word " * 50_000}).encode(),
    ]
    corpus.write_bytes(b"\n".join(lines) + b"\n")
    config = tiny_config(
        data={"corpus": str(corpus), "max_documents": None, "heldout_fraction": 0.2}
    )
    run_dir = tmp_path / "run"
    run_cli("train", str(config), "--output-dir", str(run_dir), "--max-steps", "12")
    assert len(metrics(run_dir)) == 12
    prepared = run_cli("prepare", str(config))
    report = json.loads(prepared.stdout)
    skipped = report["skipped_inputs"]
    assert skipped.get("empty_document") == 2
    assert skipped.get("missing_text") == 1
    assert report["documents"]["invalid_utf8_documents"] == 1
    assert report["documents"]["one_sentence_documents"] == 1
    assert report["documents"]["raw_records"] == 9
    assert report["documents"]["documents"] + sum(skipped.values()) == 9
    sd = report["tasks"]["sentence_distance"]
    assert (
        sd["train_skipped_documents"].get("fewer_than_two_sentences", 0)
        + sd["heldout_skipped_documents"].get("fewer_than_two_sentences", 0)
        == 1
    )


@pytest.mark.parametrize(
    ("zero_stage", "precision"), [(1, "fp32"), (2, "fp32"), (3, "fp32"), (2, "bf16")]
)
def test_zero_stages_train_with_idle_heads(reference_run, tmp_path, zero_stage, precision):
    # 10 steps cross the stage boundary at 8: sentence_distance's head is idle, then used.
    # Every stage must train like ZeRO 0 (the reference run): the same per-step losses.
    config, reference, _ = reference_run
    run_dir = tmp_path / "run"
    run_cli(
        "train",
        str(config),
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
    tolerance = ZERO_FP32_TOLERANCE if precision == "fp32" else BF16_TOLERANCE
    for step, losses in ours.items():
        assert losses.keys() == expected[step].keys(), step
        for task, loss in losses.items():
            assert loss == pytest.approx(expected[step][task], abs=tolerance), (step, task)
    assert (run_dir / "checkpoints" / "step-00000010" / "model.safetensors").exists()


def test_two_processes_on_cpu_with_gloo(tiny_config, tmp_path):
    config = tiny_config()
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "ernie_cpt.cli",
        "train",
        str(config),
        "--output-dir",
        str(run_dir),
        "--max-steps",
        "10",
    ]
    result = subprocess.run(
        command,
        cwd=REPO,
        env=cli_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 11))
    single = tmp_path / "single"
    run_cli("train", str(config), "--output-dir", str(single), "--max-steps", "10")
    # two ranks see twice the examples per step: each rank draws micro_batch_size (4)
    # examples of the step's task; "samples" counts masked tokens, summed over ranks
    one = metrics(single)
    assert all(r["step_tokens"] > 0 for r in rows)
    assert [r["task"] for r in rows] == [r["task"] for r in one]
    pairs = [(a, b) for a, b in zip(rows, one, strict=True) if a["task"] == "sentence_distance"]
    assert pairs  # steps 9-10 are in stage 2
    for two_ranks, one_rank in pairs:
        assert one_rank["samples"]["sentence_distance"] == 4
        assert two_ranks["samples"]["sentence_distance"] == 2 * 4
    assert sorted(os.listdir(run_dir / "checkpoints" / "step-00000010")).count("rng-rank1.pt") == 1
    shutil.rmtree(run_dir)


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty", "dwa", "gradnorm", "dtp", "pcgrad"])
def test_each_weighting_method_trains_and_logs_weights(tiny_config, tmp_path, weighting):
    # 12 steps cross into stage 2, where sentence_distance batches carry mlm labels: two
    # losses in one forward for the method to balance. Telemetry every 4 steps.
    config = tiny_config(
        schedule={
            "weighting": weighting,
            "weighting_options": {"window": 2} if weighting == "dwa" else {},
        },
        train={"zero_stage": 2, "grad_telemetry_every": 4},
    )
    run_dir = tmp_path / "run"
    run_cli("train", str(config), "--output-dir", str(run_dir), "--max-steps", "12")
    rows = metrics(run_dir)
    combined = [r for r in rows if set(r["losses"]) == {"mlm", "sentence_distance"}]
    assert combined, "no step combined two losses"
    assert all(set(r["weights"]) == set(r["losses"]) for r in rows)
    check_logged_weights(weighting, rows)
    telemetry = [r["grad"] for r in rows if "grad" in r]
    assert [r["step"] for r in rows if "grad" in r] == [4, 8, 12]
    last = telemetry[-1]
    assert set(last["norms"]) == {"mlm", "sentence_distance"}
    assert all(norm > 0 for norm in last["norms"].values())
    cosine = last["cosine"]
    assert cosine["mlm"]["mlm"] == pytest.approx(1.0, abs=1e-5)
    assert cosine["sentence_distance"]["sentence_distance"] == pytest.approx(1.0, abs=1e-5)
    # the values themselves are checked against an independent autograd computation in
    # test_gradients.py; here: one cosine per pair, whichever task comes first
    assert cosine["mlm"]["sentence_distance"] == cosine["sentence_distance"]["mlm"]
    assert abs(cosine["mlm"]["sentence_distance"]) < 1.0 - 1e-6  # two different gradients


def check_logged_weights(weighting: str, rows: list[dict]) -> None:
    """What each method must log as its weights (exact where the method fixes them)."""
    combined = [r["weights"] for r in rows if len(r["weights"]) == 2]
    single = [r["weights"] for r in rows if len(r["weights"]) == 1]
    if weighting in ("fixed", "pcgrad"):  # no weights given / pcgrad projects, never scales
        assert all(w == 1.0 for r in rows for w in r["weights"].values())
    elif weighting in ("gradnorm", "dwa"):  # n * softmax over the n present tasks
        assert all(sum(w.values()) == pytest.approx(2.0, abs=1e-6) for w in combined)
        assert all(w == {"mlm": pytest.approx(1.0)} for w in single)
    elif weighting == "uncertainty":  # exp(-s) with s = 0 at the start, then learned
        assert rows[0]["weights"] == {"mlm": 1.0}
        assert rows[-1]["weights"]["mlm"] != 1.0
    elif weighting == "dtp":  # 1 until a KPI is observed, then the focal priority
        assert rows[0]["weights"] == {"mlm": 1.0}
        assert any(w["mlm"] != 1.0 for w in single)
    if weighting == "dwa":  # window 2: sentence_distance (from step 9) has no 2 closed
        # windows by step 12, and a lone ready task's softmax weight is 1
        assert all(v == pytest.approx(1.0) for w in combined + single for v in w.values())
    if weighting in ("gradnorm", "uncertainty", "dtp"):  # the method did act
        assert any(w != dict.fromkeys(w, 1.0) for w in combined + single), weighting


@pytest.mark.parametrize("weighting", ["gradnorm", "pcgrad"])
def test_gradnorm_and_pcgrad_are_refused_at_zero_3(tiny_config, tmp_path, weighting):
    config = tiny_config(schedule={"weighting": weighting}, train={"zero_stage": 3})
    result = run_cli("train", str(config), "--output-dir", str(tmp_path / "run"), check=False)
    assert result.returncode != 0 and "ZeRO" in result.stderr and weighting in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before any step
