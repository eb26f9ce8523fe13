"""The DeepSpeed config generated from the train section."""

from __future__ import annotations

import math

import pytest
import torch

from ernie_cpt.config import TrainConfig
from ernie_cpt.training.engine import deepspeed_config, lr_at, lr_scheduler, parameter_groups


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
    assert "scheduler" not in config  # our own schedule (lr_at), passed as a client scheduler


def test_lr_at_hand_values():
    linear = TrainConfig(lr=1e-3, warmup_steps=4, lr_decay="linear")
    assert [lr_at(u, linear, 12) for u in (0, 1, 3, 4, 8, 11)] == pytest.approx(
        [0.25e-3, 0.5e-3, 1e-3, 1e-3, 0.5e-3, 0.125e-3], abs=1e-15
    )
    cosine = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=0, lr_decay="cosine")
    assert lr_at(0, cosine, 10) == pytest.approx(1e-3)
    assert lr_at(5, cosine, 10) == pytest.approx(1e-4 + 9e-4 / 2)
    # warm-up longer than the run: capped at total_steps - 1 updates
    short = TrainConfig(lr=1e-3, warmup_steps=100, lr_decay="constant")
    assert [lr_at(u, short, 3) for u in range(3)] == pytest.approx([0.5e-3, 1e-3, 1e-3])


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


def learning_rates(distributed, train: TrainConfig, total_steps: int) -> list[float]:
    """The learning rate of each of ``total_steps`` optimizer steps, as the trainer reads it
    (``engine.get_lr()`` before the step), from a real DeepSpeed engine on CPU."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    config = deepspeed_config(train, total_steps)
    config["optimizer"]["params"]["torch_adam"] = True
    engine, *_ = distributed.initialize(
        model=model,
        model_parameters=model.parameters(),
        config=config,
        lr_scheduler=lr_scheduler(train, total_steps),
    )
    rates = []
    for _ in range(total_steps):
        rates.append(engine.get_lr()[0])
        for _ in range(train.gradient_accumulation_steps):
            engine.backward(engine(torch.ones(train.micro_batch_size, 2)).sum())
            engine.step()
    return rates


def test_linear_warmup_and_decay_exact_values(distributed):
    # lr 1e-3, 2 warm-up steps, 10 steps: step s (1-based) of the warm-up runs at lr * s / 2,
    # then lr * (10 - u) / 8 for update u = 2..9 (0-based): no update runs at lr 0.
    train = TrainConfig(micro_batch_size=2, lr=1e-3, warmup_steps=2, lr_decay="linear")
    expected = [0.5e-3, 1e-3] + [1e-3 * (10 - u) / 8 for u in range(2, 10)]
    assert learning_rates(distributed, train, 10) == pytest.approx(expected, abs=1e-12)
    # with gradient accumulation the schedule advances once per update, not per micro-batch
    accumulated = TrainConfig(
        micro_batch_size=2, gradient_accumulation_steps=3, lr=1e-3, warmup_steps=2
    )
    assert learning_rates(distributed, accumulated, 10) == pytest.approx(expected, abs=1e-12)


def test_constant_and_cosine_schedules(distributed):
    constant = TrainConfig(micro_batch_size=2, lr=1e-3, warmup_steps=2, lr_decay="constant")
    assert learning_rates(distributed, constant, 6) == pytest.approx(
        [0.5e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3], abs=1e-12
    )
    # cosine: linear warm-up to the peak, then min + (lr - min) (1 + cos(pi k / 10)) / 2 for
    # k = 0..9 over the remaining 10 of 12 updates
    cosine = TrainConfig(
        micro_batch_size=2, lr=1e-3, min_lr=1e-4, warmup_steps=2, lr_decay="cosine"
    )
    expected = [0.5e-3, 1e-3] + [
        1e-4 + 9e-4 * (1 + math.cos(math.pi * k / 10)) / 2 for k in range(10)
    ]
    assert learning_rates(distributed, cosine, 12) == pytest.approx(expected, abs=1e-12)


class _TwoHeads(torch.nn.Module):
    """Head ``b`` is used on the first forward only: an idle head afterwards (grad None)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.calls = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.a(x) + (self.b(x) if self.calls == 1 else 0)


def _trained_weights(engine, steps: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        engine.backward(engine(torch.randn(2, 4, generator=generator)).square().sum())
        engine.step()
        engine.zero_grad()  # set_to_none: the idle head has no gradient on later steps
    return torch.cat([p.detach().flatten() for p in engine.module.parameters()])


def test_lone_process_skips_the_no_op_gradient_all_reduce(distributed):
    from ernie_cpt.training.engine import build_engine

    def engine(stage: int):
        torch.manual_seed(0)
        train = TrainConfig(micro_batch_size=2, zero_stage=stage, gradient_clipping=1.0)
        return build_engine(_TwoHeads(), train, total_steps=4, world_size=1)

    lone, zero1 = engine(0), engine(1)
    assert {"allreduce_gradients", "clip_fp32_gradients"} <= set(vars(lone))
    assert "allreduce_gradients" not in vars(zero1)  # ZeRO 1-3 do their own work in that call
    reducing = engine(0)
    del reducing.allreduce_gradients  # DeepSpeed's own: zero gradients for the idle head
    del reducing.clip_fp32_gradients  # and its per-tensor clipping
    weights = _trained_weights(lone)
    assert torch.equal(weights, _trained_weights(reducing))  # same bits
    untouched = engine(0)
    untouched.allreduce_gradients = lambda *args, **kwargs: None  # no zero gradients
    assert not torch.equal(weights, _trained_weights(untouched))  # the idle head's moments


def test_lone_clipping_is_deepspeed_s_to_the_bit(distributed):
    from deepspeed.runtime.utils import clip_grad_norm_

    from ernie_cpt.training.engine import clip_lone_gradients

    generator = torch.Generator().manual_seed(0)
    for scale in (0.01, 1.0, 100.0):  # no clipping, around the threshold, clipping
        ours = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in SHAPES]
        theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
        for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            if index != 1:  # one parameter without a gradient
                a.grad = torch.randn(a.shape, generator=generator) * scale
                b.grad = a.grad.clone()
        assert torch.equal(clip_lone_gradients(ours, 1.0), clip_grad_norm_(theirs, 1.0))
        for a, b in zip(ours, theirs, strict=True):
            assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad)


SHAPES = [(50, 7), (13,), (800, 16), (3,)]
