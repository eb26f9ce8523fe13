"""Loss-weighting methods: each against its definition, a contract every method passes, and
every method through a real DeepSpeed engine on CPU at ZeRO 0-3."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from ernie_cpt.training.weighting import (
    WEIGHTINGS,
    ZERO3_UNSUPPORTED,
    LossWeighting,
    build_weighting,
    check_zero_stage,
    kpi_key,
    loss_key,
)
from ernie_cpt.training.weighting.dtp import focal_priority
from ernie_cpt.training.weighting.dwa import dwa_weights
from ernie_cpt.training.weighting.pcgrad import project_conflicting

TASKS = ("a", "b", "c")
# Options that make each method's state non-trivial within a few steps.
OPTIONS = {
    "fixed": {"weights": {"a": 0.5, "c": 2.0}},
    "uncertainty": {"initial_log_variance": 0.1},
    "dwa": {"window": 1},
    "gradnorm": {"alpha": 1.5},
    "dtp": {"gamma": 2.0, "momentum": 0.5},
    "pcgrad": {"seed": 3},
    "rlw": {"seed": 5},
    "famo": {"lr": 0.05, "gamma": 0.001},
}


def toy_losses(tasks=TASKS, seed=0):
    """Three conflicting-ish task losses of one shared activation (B, T, H) = (2, 3, 4)."""
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(2, 3, 4, generator=generator, requires_grad=True)
    targets = torch.randn(len(TASKS), 4, generator=generator)
    losses = {t: ((shared - targets[TASKS.index(t)]) ** 2).mean() for t in tasks}
    return losses, shared


# --- the contract every registered method passes -------------------------------------------


def test_options_table_covers_registry():
    assert set(OPTIONS) == set(WEIGHTINGS)


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_contract(name):
    method = build_weighting(name, TASKS, OPTIONS[name])
    assert isinstance(method, nn.Module) and isinstance(method, LossWeighting)
    for present in (TASKS, ("b",), ("c", "a")):
        losses, shared = toy_losses(present)
        surrogate, weights = method.combine(losses, shared, step=0)
        assert surrogate.dim() == 0 and torch.isfinite(surrogate)
        assert list(weights) == [t for t in TASKS if t in present]  # run order
        assert all(isinstance(w, float) for w in weights.values())
        surrogate.backward()
        assert shared.grad is not None and torch.isfinite(shared.grad).all()
    with pytest.raises(ValueError, match="losses must name"):
        method.combine({"zzz": torch.tensor(1.0)}, None, step=0)
    with pytest.raises(ValueError, match="losses must name"):
        method.combine({}, None, step=0)


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_single_task_step_is_weighted_plain_loss(name):
    method = build_weighting(name, TASKS, OPTIONS[name])
    losses, shared = toy_losses(("b",))
    surrogate, weights = method.combine(losses, shared, step=0)
    (expected,) = torch.autograd.grad(weights["b"] * losses["b"], shared, retain_graph=True)
    surrogate.backward()
    torch.testing.assert_close(shared.grad, expected)


def drive(method, steps=4):
    """Feed a method a few steps of losses and metrics; return the last combine's output."""
    for step in range(steps):
        losses, shared = toy_losses(seed=step)
        surrogate, weights = method.combine(losses, shared, step)
        # Only gradients into the method's own parameters matter here.
        surrogate.backward()
        with torch.no_grad():
            for parameter in method.parameters():
                parameter -= 0.1 * parameter.grad
                parameter.grad = None
        metrics = {loss_key(t): losses[t].item() * (1 + step) for t in TASKS}
        metrics |= {kpi_key(t): 0.2 + 0.1 * i + 0.05 * step for i, t in enumerate(TASKS)}
        method.observe(metrics, step)
    losses, shared = toy_losses(seed=99)
    return method.combine(losses, shared, steps)


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_state_dict_round_trip(name):
    method = build_weighting(name, TASKS, OPTIONS[name])
    drive(method)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = build_weighting(name, TASKS, OPTIONS[name])
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    if name in ("dwa", "dtp", "gradnorm"):
        assert (
            restored.get_extra_state()
            == method.get_extra_state()
            != build_weighting(name, TASKS, OPTIONS[name]).get_extra_state()
        )
    for (key, value), (_, other) in zip(
        method.state_dict().items(), restored.state_dict().items(), strict=True
    ):
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, other, msg=key)
    # The next step (weights, random orders) is identical.
    surrogate, weights = drive(method, steps=1)
    surrogate2, weights2 = drive(restored, steps=1)
    assert weights == weights2
    torch.testing.assert_close(surrogate, surrogate2)


def test_build_errors_suggest_names():
    with pytest.raises(ValueError, match='did you mean "pcgrad"'):
        build_weighting("pcgard", TASKS)
    with pytest.raises(ValueError, match='did you mean "temperature"'):
        build_weighting("dwa", TASKS, {"temprature": 2.0})
    with pytest.raises(ValueError, match="unknown tasks"):
        build_weighting("fixed", TASKS, {"weights": {"zzz": 1.0}})
    with pytest.raises(ValueError, match="unique"):
        build_weighting("fixed", ("a", "a"))


def test_check_zero_stage():
    for name in WEIGHTINGS:
        for stage in (0, 1, 2):
            check_zero_stage(name, stage)
    check_zero_stage("uncertainty", 3)
    for name in ("pcgrad", "gradnorm"):
        with pytest.raises(ValueError, match="ZeRO-3"):
            check_zero_stage(name, 3)
    with pytest.raises(ValueError, match="stage"):
        check_zero_stage("fixed", 4)
    with pytest.raises(ValueError, match="unknown loss weighting"):
        check_zero_stage("pcgard", 0)


# --- each method against its definition ----------------------------------------------------


def test_fixed_multiplies():
    method = build_weighting("fixed", TASKS, {"weights": {"a": 0.5, "c": 3.0}})
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}
    surrogate, weights = method.combine(losses, None, step=0)
    assert weights == {"a": 0.5, "b": 1.0}
    assert surrogate.item() == pytest.approx(0.5 * 2.0 + 3.0)


def test_uncertainty_log_variance_tracks_loss():
    method = build_weighting("uncertainty", ("small", "large"))
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    for step in range(300):
        losses = {"small": torch.tensor(1.0), "large": torch.tensor(5.0)}
        surrogate, weights = method.combine(losses, None, step)
        optimizer.zero_grad()
        surrogate.backward()
        optimizer.step()
    small, large = method.log_variance.tolist()
    assert large > small
    # exp(-s) L + s is minimal at s = log L: the effective weight tends to 1 / L.
    assert small == pytest.approx(math.log(1.0), abs=1e-3)
    assert large == pytest.approx(math.log(5.0), abs=1e-3)
    assert weights["large"] == pytest.approx(1 / 5.0, rel=1e-2)


def test_uncertainty_surrogate_formula():
    method = build_weighting("uncertainty", TASKS)
    with torch.no_grad():
        method.log_variance.copy_(torch.tensor([0.5, -1.0, 2.0]))
    losses = {"a": torch.tensor(2.0), "c": torch.tensor(3.0)}
    surrogate, weights = method.combine(losses, None, step=0)
    expected = math.exp(-0.5) * 2.0 + 0.5 + math.exp(-2.0) * 3.0 + 2.0
    assert surrogate.item() == pytest.approx(expected)
    assert weights == pytest.approx({"a": math.exp(-0.5), "c": math.exp(-2.0)})


def test_dwa_weights_follow_formula():
    method = build_weighting("dwa", TASKS, {"temperature": 2.0, "window": 2})
    history = {  # step -> task losses; windows are steps {0, 1}, {2, 3}
        0: {"a": 4.0, "b": 1.0, "c": 1.0},
        1: {"a": 2.0, "b": 1.0},
        2: {"a": 3.0, "b": 1.5, "c": 5.0},
        3: {"a": 1.0, "b": 0.5},
    }
    losses = {t: torch.tensor(1.0) for t in TASKS}
    for step, step_losses in history.items():
        method.observe({loss_key(t): v for t, v in step_losses.items()}, step)
        # Fewer than two closed windows: every weight is 1.
        assert method.combine(losses, None, step)[1] == dict.fromkeys(TASKS, 1.0)
    method.observe({}, step=4)  # the first step of window 2 closes window 1
    ratios = {"a": 2.0 / 3.0, "b": 1.0 / 1.0, "c": 5.0 / 1.0}  # L(t-1) / L(t-2)
    total = sum(math.exp(r / 2.0) for r in ratios.values())
    expected = {t: 3 * math.exp(r / 2.0) / total for t, r in ratios.items()}
    surrogate, weights = method.combine(losses, None, step=4)
    assert weights == pytest.approx(expected)
    assert surrogate.item() == pytest.approx(sum(expected.values()))
    # A subset: K and the softmax run over the present tasks.
    _, weights = method.combine({"a": losses["a"], "b": losses["b"]}, None, step=4)
    pair = math.exp(ratios["a"] / 2) + math.exp(ratios["b"] / 2)
    assert weights == pytest.approx({t: 2 * math.exp(ratios[t] / 2) / pair for t in "ab"})
    assert dwa_weights([1.0, 1.0], 2.0) == [1.0, 1.0]


def test_dtp_weights_follow_formula():
    method = build_weighting("dtp", TASKS, {"gamma": 2.0, "momentum": 0.5})
    method.observe({kpi_key("a"): 0.4, kpi_key("b"): 0.9}, step=0)
    method.observe({kpi_key("a"): 0.8}, step=1)
    kappa = {"a": 0.5 * 0.4 + 0.5 * 0.8, "b": 0.9}
    losses = {t: torch.tensor(2.0) for t in TASKS}
    surrogate, weights = method.combine(losses, None, step=2)
    expected = {t: -((1 - k) ** 2) * math.log(k) for t, k in kappa.items()} | {"c": 1.0}
    assert weights == pytest.approx(expected)
    assert surrogate.item() == pytest.approx(2.0 * sum(expected.values()))
    assert weights["a"] > weights["b"]  # the task with the lower KPI is prioritised
    # kappa is clipped into [1e-6, 1 - 1e-6]: a solved task (KPI 1) gets priority
    # (1e-6)^2 * -log(1 - 1e-6) ~ 1e-18, i.e. 0; an unsolved one (KPI 0) gets -log(1e-6)
    assert focal_priority(1.0, 2.0) == pytest.approx(0.0, abs=1e-15)
    assert focal_priority(0.0, 2.0) == pytest.approx(6 * math.log(10), rel=1e-5)
    assert focal_priority(0.5, 0.0) == pytest.approx(math.log(2))  # gamma 0: plain -log


# --- GradNorm --------------------------------------------------------------------------------


def scaled_quadratic(shared, scales, offsets=(0.0, 0.0)):
    """L_a = s_a f(shared) + o_a, L_b = s_b f(shared) + o_b: gradients in ratio s_b / s_a."""
    direction = torch.tensor([1.0, -2.0, 0.5])
    base = ((shared @ direction) ** 2).mean()
    return {t: s * base + o for t, s, o in zip("ab", scales, offsets, strict=True)}


def test_gradnorm_equalises_gradient_norms():
    shared = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    method = build_weighting("gradnorm", ("a", "b"), {"alpha": 1.5})
    optimizer = torch.optim.Adam(method.parameters(), lr=0.02)
    for step in range(400):
        losses = scaled_quadratic(shared, scales=(1.0, 10.0))  # task b's gradient is 10x
        surrogate, weights = method.combine(losses, shared, step)
        optimizer.zero_grad()
        surrogate.backward()
        optimizer.step()
    losses = scaled_quadratic(shared, scales=(1.0, 10.0))
    norm_a, norm_b = (
        weights[t] * torch.autograd.grad(losses[t], shared, retain_graph=True)[0].norm()
        for t in "ab"
    )
    assert (norm_a / norm_b).item() == pytest.approx(1.0, abs=0.05)
    assert weights["a"] + weights["b"] == pytest.approx(2.0)
    assert weights["a"] / weights["b"] == pytest.approx(10.0, rel=0.05)


def test_gradnorm_surrogate_definition():
    shared = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    method = build_weighting("gradnorm", ("a", "b"), {"alpha": 1.5})
    method.combine(scaled_quadratic(shared, (1.0, 3.0)), shared, 0)  # records L(0)
    initial = dict(method.initial_losses)
    with torch.no_grad():
        method.weight_logits.copy_(torch.tensor([0.3, -0.2]))
    shared.grad = None
    losses = scaled_quadratic(shared, (1.0, 3.0), offsets=(2.0, 0.0))  # a descends slower
    surrogate, weights = method.combine(losses, shared, 1)
    # By hand: w = 2 softmax(logits); G_i = w_i ||dL_i/dshared||; target from the loss ratios.
    w = 2 * torch.softmax(torch.tensor([0.3, -0.2]), 0)
    grads = [torch.autograd.grad(losses[t], shared, retain_graph=True)[0] for t in "ab"]
    norms = w * torch.stack([g.norm() for g in grads])
    ratio = torch.tensor([losses[t].item() / initial[t] for t in "ab"])
    target = norms.mean() * (ratio / ratio.mean()) ** 1.5
    expected = sum(w[i] * losses[t] for i, t in enumerate("ab")) + (norms - target).abs().sum()
    assert weights == pytest.approx({"a": w[0].item(), "b": w[1].item()})
    assert surrogate.item() == pytest.approx(expected.item(), rel=1e-5)
    surrogate.backward()
    # L_grad reaches only the weights: the encoder gets sum_i w_i dL_i/dshared.
    torch.testing.assert_close(shared.grad, w[0] * grads[0] + w[1] * grads[1])
    # Task a descends slower (larger r): its weight must grow, b's shrink.
    grad = method.weight_logits.grad
    assert grad[0] < 0 < grad[1]


# --- PCGrad ----------------------------------------------------------------------------------


class TwoHeads(nn.Module):
    """A shared Linear "encoder" and two Linear heads whose gradients at shared conflict."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(3, 4)
        self.heads = nn.ModuleDict({"a": nn.Linear(4, 1), "b": nn.Linear(4, 1)})
        with torch.no_grad():
            self.heads["b"].weight.copy_(-self.heads["a"].weight + 0.3)

    def losses(self, x):
        shared = self.encoder(x)  # (B, H)
        return {t: self.heads[t](shared).mean() for t in "ab"}, shared


def test_pcgrad_projects_encoder_gradient_and_keeps_heads():
    model = TwoHeads()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    losses, shared = model.losses(x)
    g_a, g_b = (torch.autograd.grad(losses[t], shared, retain_graph=True)[0] for t in "ab")
    dot = (g_a * g_b).sum()
    assert dot < 0  # the toy conflicts
    # Algorithm 1 by hand for two tasks.
    g_a_pc = g_a - dot / g_b.pow(2).sum() * g_b
    g_b_pc = g_b - dot / g_a.pow(2).sum() * g_a
    g_pc = g_a_pc + g_b_pc
    assert (g_pc * g_a).sum() >= -1e-6 and (g_pc * g_b).sum() >= -1e-6
    expected_encoder = torch.autograd.grad(
        shared, list(model.encoder.parameters()), grad_outputs=g_pc, retain_graph=True
    )
    expected_heads = {
        t: torch.autograd.grad(losses[t], list(model.heads[t].parameters()), retain_graph=True)
        for t in "ab"
    }

    method = build_weighting("pcgrad", ("a", "b"))
    surrogate, weights = method.combine(losses, shared, step=0)
    assert weights == {"a": 1.0, "b": 1.0}
    assert surrogate.item() == pytest.approx((losses["a"] + losses["b"]).item())
    surrogate.backward()
    for parameter, expected in zip(model.encoder.parameters(), expected_encoder, strict=True):
        torch.testing.assert_close(parameter.grad, expected)
    for t in "ab":
        for parameter, expected in zip(model.heads[t].parameters(), expected_heads[t], strict=True):
            torch.testing.assert_close(parameter.grad, expected)


def test_project_conflicting():
    generator = torch.Generator().manual_seed(0)
    agreeing = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    torch.testing.assert_close(project_conflicting(agreeing, generator), agreeing)
    grads = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [-0.5, -1.0, 1.0]])
    # Algorithm 1 by hand, drawing the same seeded orders: g_i is projected, in turn, off
    # each original g_j (j != i) it still conflicts with.
    orders = torch.Generator().manual_seed(7)
    expected = grads.clone()
    for i in range(3):
        for j in torch.randperm(3, generator=orders).tolist():
            dot = float(expected[i] @ grads[j])
            if j != i and dot < 0:
                expected[i] = expected[i] - dot / float(grads[j] @ grads[j]) * grads[j]
    torch.testing.assert_close(
        project_conflicting(grads, torch.Generator().manual_seed(7)), expected
    )
    projected = project_conflicting(grads[:2], generator)
    torch.testing.assert_close(projected[0], torch.tensor([0.5, 0.5, 0.0]))
    torch.testing.assert_close(projected[1], torch.tensor([0.0, 1.0, 0.0]))


# --- through a real DeepSpeed engine ----------------------------------------------------------


class TinyMultiTask(nn.Module):
    """Shared Linear "encoder" + two Linear heads; forward returns the surrogate."""

    def __init__(self, weighting):
        super().__init__()
        self.encoder = nn.Linear(4, 8)
        self.heads = nn.ModuleDict({"a": nn.Linear(8, 3), "b": nn.Linear(8, 3)})
        self.weighting = weighting

    def forward(self, x, targets, step):
        shared = torch.tanh(self.encoder(x))  # (B, H)
        losses = {t: ((self.heads[t](shared) - y) ** 2).mean() for t, y in targets.items()}
        surrogate, self.last_weights = self.weighting.combine(losses, shared, step)
        return surrogate


ENGINE_CASES = [
    (name, stage)
    for name in sorted(WEIGHTINGS)
    for stage in (0, 1, 2, 3)
    if not (stage == 3 and name in ZERO3_UNSUPPORTED)
]


@pytest.mark.parametrize(("name", "stage"), ENGINE_CASES)
def test_deepspeed_engine(distributed, name, stage):
    from deepspeed.utils import safe_get_full_grad

    check_zero_stage(name, stage)
    torch.manual_seed(0)
    options = OPTIONS[name] if name != "fixed" else {"weights": {"b": 0.5}}
    model = TinyMultiTask(build_weighting(name, ("a", "b"), options))
    reference = copy.deepcopy(model)
    x = torch.randn(2, 4)
    targets = {"a": torch.randn(2, 3), "b": torch.randn(2, 3)}
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
        # Threshold 0: at ZeRO-3 even these tiny parameters are partitioned.
        "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
    }
    engine, *_ = distributed.initialize(
        model=model, model_parameters=model.parameters(), config=config
    )
    reference(x, targets, 0).backward()
    steps = [targets, {"a": targets["a"]}, targets]  # the middle step has one task
    for step, step_targets in enumerate(steps):
        surrogate = engine(x, step_targets, step)
        engine.backward(surrogate)
        assert torch.isfinite(surrogate)
        assert list(engine.module.last_weights) == list(step_targets)
        if step == 0:  # the engine's gradients are the method's, at every stage
            for (key, parameter), expected in zip(
                engine.module.named_parameters(), reference.parameters(), strict=True
            ):
                torch.testing.assert_close(safe_get_full_grad(parameter), expected.grad, msg=key)
        engine.step()
        metrics = {loss_key(t): 1.0 / (1 + step) for t in step_targets}
        engine.module.weighting.observe(metrics | {kpi_key("a"): 0.5}, step)
    if name in ("uncertainty", "gradnorm"):  # the learnable weights were optimised
        assert engine.module.last_weights != {"a": 1.0, "b": 1.0}


@pytest.mark.parametrize("name", ["dtp", "dwa", "gradnorm", "pcgrad", "uncertainty"])
def test_deepspeed_checkpoint_keeps_method_state(distributed, name, tmp_path):
    stage = 2 if name in ZERO3_UNSUPPORTED else 3
    options = OPTIONS[name]

    def make_engine():
        torch.manual_seed(0)
        model = TinyMultiTask(build_weighting(name, ("a", "b"), options))
        config = {
            "train_micro_batch_size_per_gpu": 2,
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
            "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
        }
        return distributed.initialize(
            model=model, model_parameters=model.parameters(), config=config
        )[0]

    engine = make_engine()
    x = torch.randn(2, 4)
    targets = {"a": torch.randn(2, 3), "b": torch.randn(2, 3)}
    for step in range(4):
        engine.backward(engine(x, targets, step))
        engine.step()
        metrics = {loss_key("a"): 1.0 / (1 + step), loss_key("b"): 1.0, kpi_key("a"): 0.3}
        engine.module.weighting.observe(metrics, step)
    engine.save_checkpoint(str(tmp_path), tag="step4")
    resumed = make_engine()
    resumed.load_checkpoint(str(tmp_path), tag="step4")
    expected = engine(x, targets, 4)
    torch.testing.assert_close(resumed(x, targets, 4), expected)
    assert resumed.module.last_weights == engine.module.last_weights
