"""RLW and FAMO against their definitions, their state across checkpoints, and through a
DeepSpeed engine at ZeRO 0-2 (CPU)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from ernie_cpt.training.weighting import build_weighting, check_zero_stage, loss_key
from pretrain_tasks.base import stable_seed

TASKS = ("a", "b", "c")


def losses_of(values: dict[str, float]) -> dict[str, torch.Tensor]:
    return {t: torch.tensor(v, requires_grad=True) for t, v in values.items()}


# --- RLW: lambda = softmax(z), z ~ N(0, I) per step --------------------------------------------


def expected_rlw(present, seed, step):
    generator = torch.Generator().manual_seed(stable_seed("rlw", seed, step) % (2**63))
    z = torch.randn(len(TASKS), generator=generator, dtype=torch.float64).tolist()
    exps = {t: math.exp(z[TASKS.index(t)]) for t in present}
    return {t: e / sum(exps.values()) for t, e in exps.items()}


def test_rlw_weights_are_softmax_of_the_steps_normal_draw():
    method = build_weighting("rlw", TASKS, {"seed": 5})
    for step, present in ((0, TASKS), (1, TASKS), (7, ("a", "c"))):
        losses = losses_of({t: 1.0 + i for i, t in enumerate(present)})
        surrogate, weights = method.combine(losses, None, step)
        expected = expected_rlw(present, 5, step)
        assert weights == pytest.approx(expected, rel=1e-12, abs=0)
        assert sum(weights.values()) == pytest.approx(1.0, abs=1e-12)
        surrogate.backward()
        for t in present:  # d surrogate / d L_t = lambda_t
            assert float(losses[t].grad) == pytest.approx(expected[t], rel=1e-6)
    # Same step, same weights (ranks, micro-batches, resumed runs); other steps differ.
    again = method.combine(losses_of(dict.fromkeys(TASKS, 1.0)), None, 0)[1]
    assert again == method.combine(losses_of(dict.fromkeys(TASKS, 2.0)), None, 0)[1]
    assert again != method.combine(losses_of(dict.fromkeys(TASKS, 1.0)), None, 1)[1]


def test_rlw_draws_are_standard_normal():
    z = torch.stack([torch.tensor(list(expected_rlw(("a",), 0, s).values())) for s in range(1)])
    assert z.numel() == 1  # one task: softmax of one value is 1
    draws = torch.cat(
        [
            torch.randn(
                3,
                generator=torch.Generator().manual_seed(stable_seed("rlw", 0, s) % (2**63)),
                dtype=torch.float64,
            )
            for s in range(2000)
        ]
    )
    assert abs(float(draws.mean())) < 0.06 and abs(float(draws.std()) - 1.0) < 0.05


# --- FAMO ---------------------------------------------------------------------------------------


def test_famo_weights_follow_definition():
    method = build_weighting("famo", ("a", "b"), {})
    losses = losses_of({"a": 1.0, "b": 4.0})
    surrogate, weights = method.combine(losses, None, 0)
    # xi = 0: z = (1/2, 1/2); D = L + 1e-8; c = 1/2 / D_a + 1/2 / D_b; weights z_i / (c D_i).
    d_a, d_b = 1.0 + 1e-8, 4.0 + 1e-8
    c = 0.5 / d_a + 0.5 / d_b
    assert weights == pytest.approx({"a": 0.5 / (c * d_a), "b": 0.5 / (c * d_b)}, rel=1e-9)
    assert weights["a"] == pytest.approx(0.8, rel=1e-6)
    assert float(surrogate.detach()) == pytest.approx(
        (0.5 * math.log(d_a) + 0.5 * math.log(d_b)) / c
    )
    surrogate.backward()
    assert float(losses["a"].grad) == pytest.approx(0.8, rel=1e-6)
    assert float(losses["b"].grad) == pytest.approx(0.2, rel=1e-6)


def test_famo_logit_update_is_adam_on_softmax_vjp_of_log_loss_change():
    method = build_weighting("famo", ("a", "b"), {"lr": 0.025, "gamma": 0.001})
    method.observe({loss_key("a"): 1.0, loss_key("b"): 4.0}, 0)
    assert method.logits == [0.0, 0.0]  # no previous losses yet
    method.observe({loss_key("a"): 0.5, loss_key("b"): 4.0}, 1)
    # delta = log D(t) - log D(t+1) = (log 2, 0); J^T delta = z * (delta - z.delta).
    delta_a = math.log(1.0 + 1e-8) - math.log(0.5 + 1e-8)
    g = 0.5 * (delta_a - 0.5 * delta_a)  # task a; task b gets -g
    # First Adam step (no decay at xi = 0): xi -= lr * g / (|g| + eps).
    step_a = 0.025 * g / (abs(g) + 1e-8)
    assert method.logits == pytest.approx([-step_a, step_a], rel=1e-12)
    # Task b, whose loss did not fall, now gets the larger z.
    _, weights = method.combine(losses_of({"a": 1.0, "b": 1.0}), None, 2)
    assert weights["b"] > weights["a"]
    assert weights["b"] == pytest.approx(1 / (1 + math.exp(-2 * step_a)), rel=1e-9)


def test_famo_subset_and_state_round_trip():
    method = build_weighting("famo", TASKS, {"lr": 0.1})
    for step in range(5):
        present = TASKS if step % 2 == 0 else ("b",)
        values = {t: 2.0 / (1 + step + i) for i, t in enumerate(present)}
        method.combine(losses_of(values), None, step)
        method.observe({loss_key(t): v for t, v in values.items()}, step)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = build_weighting("famo", TASKS, {"lr": 0.1})
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.get_extra_state() == method.get_extra_state()
    assert method.logits != [0.0, 0.0, 0.0]
    probe = losses_of({"a": 0.3, "c": 0.7})
    assert method.combine(probe, None, 9)[1] == restored.combine(probe, None, 9)[1]


# --- through DeepSpeed at ZeRO 0-2 ----------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self, weighting: nn.Module) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 8)
        self.heads = nn.ModuleDict({"a": nn.Linear(8, 3), "b": nn.Linear(8, 3)})
        self.weighting = weighting

    def forward(self, x, targets, step):
        shared = torch.tanh(self.encoder(x))
        losses = {t: ((self.heads[t](shared) - y) ** 2).mean() for t, y in targets.items()}
        surrogate, self.last_weights = self.weighting.combine(losses, shared, step)
        self.last_losses = {t: float(v) for t, v in losses.items()}
        return surrogate


@pytest.mark.parametrize("name", ["rlw", "famo"])
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_deepspeed_engine(distributed, name, stage):
    from deepspeed.utils import safe_get_full_grad

    check_zero_stage(name, stage)
    torch.manual_seed(0)
    model = Tiny(build_weighting(name, ("a", "b"), {}))
    reference = Tiny(build_weighting(name, ("a", "b"), {}))
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 4)
    targets = {"a": torch.randn(2, 3), "b": torch.randn(2, 3)}
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
        "zero_optimization": {"stage": stage},
    }
    engine, *_ = distributed.initialize(
        model=model, model_parameters=model.parameters(), config=config
    )
    for step, step_targets in enumerate([targets, {"a": targets["a"]}, targets, targets]):
        surrogate = engine(x, step_targets, step)
        engine.backward(surrogate)
        expected_surrogate = reference(x, step_targets, step)
        if name == "rlw":  # FAMO's weights depend on the loss values (reference not stepped)
            assert reference.last_weights == engine.module.last_weights
        if step == 0:  # the engine's gradients are the method's
            expected_surrogate.backward()
            for (key, p), q in zip(
                engine.module.named_parameters(), reference.parameters(), strict=True
            ):
                torch.testing.assert_close(safe_get_full_grad(p), q.grad, msg=key)
        engine.step()
        metrics = {loss_key(t): v for t, v in engine.module.last_losses.items()}
        engine.module.weighting.observe(metrics, step)
        reference.weighting.observe(metrics, step)
    if name == "famo":  # the logits moved, as FAMO's own update prescribes
        assert engine.module.weighting.logits == reference.weighting.logits != [0.0, 0.0]
