"""The DeepSpeed config generated from the train section."""

from __future__ import annotations

import pytest
import torch

from ernie_cpt.config import TrainConfig
from ernie_cpt.training.engine import deepspeed_config, parameter_groups


def test_deepspeed_config_from_train_section():
    train = TrainConfig(
        micro_batch_size=8, gradient_accumulation_steps=4, zero_stage=2, precision="bf16", lr=3e-4
    )
    config = deepspeed_config(train, total_steps=1000, world_size=2)
    assert config["train_batch_size"] == 64
    assert config["zero_optimization"] == {"stage": 2}
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    assert config["optimizer"]["type"] == "AdamW" and config["optimizer"]["params"]["betas"] == [
        0.9,
        0.98,
    ]
    assert config["scheduler"]["type"] == "WarmupDecayLR"
    assert config["scheduler"]["params"]["total_num_steps"] == 1000
    cosine = deepspeed_config(TrainConfig(lr_decay="cosine", lr=1e-3, min_lr=1e-4), 100)
    assert cosine["scheduler"]["type"] == "WarmupCosineLR"
    assert cosine["scheduler"]["params"]["cos_min_ratio"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (TrainConfig(zero_stage=4), "zero_stage must be 0-3"),
        (TrainConfig(precision="fp8"), "precision must be"),
        (TrainConfig(lr_decay="step"), "lr_decay must be"),
    ],
)
def test_bad_train_settings_are_refused(train, message):
    with pytest.raises(ValueError, match=message):
        deepspeed_config(train, 10)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused only without a GPU")
def test_fp16_is_refused_on_cpu_with_a_hint():
    with pytest.raises(ValueError, match="use bf16 or fp32"):
        deepspeed_config(TrainConfig(precision="fp16"), 10)


def test_no_weight_decay_on_biases_norms_and_weighting_parameters():
    module = torch.nn.ModuleDict(
        {
            "dense": torch.nn.Linear(2, 2),
            "LayerNorm": torch.nn.LayerNorm(2),
            "weightings": torch.nn.Linear(1, 1),
        }
    )
    decay, no_decay = parameter_groups(module, 0.01)
    assert [p.shape for p in decay["params"]] == [torch.Size([2, 2])]
    assert len(no_decay["params"]) == 5 and no_decay["weight_decay"] == 0.0


def test_stale_extension_build_locks_are_found(tmp_path, monkeypatch):
    from ernie_cpt.training.engine import stale_build_locks

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert stale_build_locks() == []
    (tmp_path / "deepspeed_shm_comm").mkdir()
    (tmp_path / "deepspeed_shm_comm" / "lock").touch()
    (tmp_path / "py311_cpu" / "fused_adam").mkdir(parents=True)
    (tmp_path / "py311_cpu" / "fused_adam" / "lock").touch()
    assert stale_build_locks() == [
        tmp_path / "deepspeed_shm_comm" / "lock",
        tmp_path / "py311_cpu" / "fused_adam" / "lock",
    ]
