"""Checkpoint files: manifest verification, newest-valid search, RNG round trip, atomic pointer."""

from __future__ import annotations

import json
import random

import numpy as np
import torch

from ernie_cpt.training import checkpoint as ckpt


def make_checkpoint(root, step, payload=b"weights"):
    tmp = root / f".tmp-{ckpt.tag_for(step)}"
    tmp.mkdir(parents=True)
    (tmp / "model.bin").write_bytes(payload)
    ckpt.save_rng(tmp, rank=0)
    return ckpt.finalize(tmp, root, step, {"train_state": {"step": step}}, keep=3)


def test_finalize_writes_manifest_pointer_and_prunes(tmp_path):
    for step in (1, 2, 3, 4):
        make_checkpoint(tmp_path, step)
    assert [p.name for p in ckpt.candidates(tmp_path)] == [
        "step-00000004",
        "step-00000003",
        "step-00000002",
    ]
    assert (tmp_path / "latest").read_text() == "step-00000004"
    assert ckpt.verify(tmp_path / "step-00000004") is None
    manifest = json.loads((tmp_path / "step-00000004" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.bin", "rng-rank0.pt", "trainer_state.json"}


def test_stage_end_checkpoints_are_never_pruned(tmp_path):
    for step in (1, 2, 3, 4, 5):
        tmp = tmp_path / f".tmp-{ckpt.tag_for(step)}"
        tmp.mkdir()
        ckpt.finalize(
            tmp, tmp_path, step, {"train_state": {"step": step}}, keep=2, protected=(1, 3)
        )
    assert sorted(p.name for p in ckpt.candidates(tmp_path)) == [
        "step-00000001",
        "step-00000003",
        "step-00000004",
        "step-00000005",
    ]


def test_corrupt_and_partial_checkpoints_are_skipped(tmp_path, caplog):
    make_checkpoint(tmp_path, 1)
    newest = make_checkpoint(tmp_path, 2)
    (newest / "model.bin").write_bytes(b"weightz")  # same size, other bytes
    assert ckpt.verify(newest) == "checksum mismatch in model.bin"
    assert ckpt.newest_valid(tmp_path).name == "step-00000001"
    assert "skipping checkpoint" in caplog.text
    (newest / "manifest.json").unlink()
    assert ckpt.verify(newest) == "no manifest (checkpoint incomplete)"
    (tmp_path / "step-00000001" / "model.bin").write_bytes(b"short")
    assert ckpt.verify(tmp_path / "step-00000001") == "size mismatch in model.bin"
    assert ckpt.newest_valid(tmp_path) is None


def test_clean_partial_removes_temporary_directories(tmp_path):
    (tmp_path / ".tmp-step-00000009").mkdir()
    make_checkpoint(tmp_path, 1)
    ckpt.clean_partial(tmp_path)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["step-00000001"]


def test_rng_states_round_trip_with_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    ckpt.save_rng(tmp_path, rank=0)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt.set_rng_state(ckpt.load_rng(tmp_path, rank=0))  # torch.load(weights_only=True)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
