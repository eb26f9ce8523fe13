"""Sharing architectures (ernie_cpt.model.sharing): the generic contract every kind passes
(forward, every task's loss, gradients reaching shared and task-specific parameters, and
no leak into other tasks' private parameters), gate / mixing / distance telemetry against
hand computations, ``hard`` = the model without sharing, and configuration checks."""

from __future__ import annotations

import math
import random
import re

import pytest
import torch

import pretrain_tasks
from ernie_cpt.config import ConfigError, ModelConfig, SharingConfig, config_from_dict
from ernie_cpt.model import build_model
from ernie_cpt.model.sharing import KINDS
from ernie_cpt.model.sharing.base import Stack, gate_statistics, mix
from ernie_cpt.training.train_module import TrainModule
from pretrain_tasks.base import SkipDocument, stable_seed

TINY = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
PRESENT = ("mlm", "sentence_distance")  # a token- and a sentence-level task in one batch
IDLE = "sentence_reordering"  # built, absent from the batch
NON_HARD = [k for k in KINDS if k != "hard"]


@pytest.fixture(scope="module")
def tasks(tokenizer):
    return {n: pretrain_tasks.build_task(n, {}, tokenizer, 64) for n in (*PRESENT, IDLE)}


@pytest.fixture(scope="module")
def batch(tasks, documents, corpus_view):
    """A sentence_distance batch with masked-LM labels attached (one forward, two losses)."""
    host = tasks["sentence_distance"]
    examples = []
    for document in documents:
        try:
            examples += host.build_examples(
                document, corpus_view, random.Random(stable_seed(0, document.id))
            )
        except SkipDocument:
            continue
    examples = examples[:6]
    names = ["input_ids", "token_type_ids", "word_starts", *host.example_columns()]
    columns = {n: [e[n] for e in examples] for n in names}
    generator = torch.Generator().manual_seed(0)
    out = host.collate(columns, generator)
    assert tasks["mlm"].attach(out, columns, generator)
    out["task_type_ids"] = torch.zeros_like(out["input_ids"])
    return out


def make(tasks, tokenizer, kind, **options):
    torch.manual_seed(0)
    return build_model(
        ModelConfig(**TINY),
        tasks,
        len(tokenizer),
        tokenizer.pad_token_id,
        SharingConfig(kind=kind, top_layers=2, **options),
    )


def owner(name: str, task_names) -> set[str]:
    """The tasks a sharing parameter belongs to by name (empty: shared by all)."""
    parts = set(re.split(r"\.|__", name))
    return {t for t in task_names if t in parts}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_contract(kind, tasks, tokenizer, batch):
    model = make(tasks, tokenizer, kind)
    module = TrainModule(model, tasks)
    total, losses, _ = module(batch, list(PRESENT))
    assert set(losses) == set(PRESENT)
    assert all(torch.isfinite(loss.mean()) and loss.sample_size > 0 for loss in losses.values())
    shared = [model.encoder.embeddings.word_embeddings.weight]
    shared += list(model.encoder.encoder.layer[-1].parameters())
    assert len(model.encoder.encoder.layer) == (3 if kind == "hard" else 1)
    specific = dict(model.sharing.named_parameters()) if model.sharing is not None else {}
    for task in PRESENT:
        grads = torch.autograd.grad(
            losses[task].mean(),
            shared + list(specific.values()),
            retain_graph=True,
            allow_unused=True,
        )
        assert sum(float(g.abs().sum()) for g in grads[:2] if g is not None) > 0, task
        by_name = dict(zip(specific, grads[len(shared) :], strict=True))
        norm = {n: 0.0 if g is None else float(g.abs().sum()) for n, g in by_name.items()}
        own = [n for n in norm if owner(n, tasks) == {task}]
        others = [n for n in norm if owner(n, tasks) and task not in owner(n, tasks)]
        pool = [n for n in norm if not owner(n, tasks)]
        if kind in ("soft", "cross_stitch", "mmoe", "cgc", "ple", "task_moe"):
            assert own and sum(norm[n] for n in own) > 0, (task, own)  # its column/gate/route
        if kind in ("mmoe", "cgc", "ple", "task_moe"):
            assert sum(norm[n] for n in pool) > 0, task  # the shared experts / attention
        if kind in ("soft", "mmoe", "cgc", "task_moe"):  # nothing reaches others' parameters
            assert all(norm[n] == 0.0 for n in others), [n for n in others if norm[n]]
        if kind in ("cross_stitch", "ple"):  # mixing reaches the other columns by design
            assert sum(norm[n] for n in others) > 0
    total.backward()  # every encoder and architecture parameter (idle task's too) has a gradient
    names = [n for n, p in model.named_parameters() if not n.startswith("heads.")]
    assert [n for n in names if model.get_parameter(n).grad is None] == []


def test_hard_is_the_model_without_sharing(tasks, tokenizer, batch):
    torch.manual_seed(0)
    plain = build_model(ModelConfig(**TINY), tasks, len(tokenizer), tokenizer.pad_token_id)
    hard = make(tasks, tokenizer, "hard")
    assert hard.sharing is None and hard.sharing_telemetry() == {}
    a, b = plain.state_dict(), hard.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    ids = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    out_a = plain(*ids, batch["task_type_ids"])
    out_b = hard(*ids, batch["task_type_ids"], PRESENT)
    assert torch.equal(out_a.sequence_output, out_b.for_task("mlm").sequence_output)
    assert out_b.routes == {} and out_b.extra_loss is None


def test_gate_statistics_by_hand():
    probs = torch.tensor([[[0.5, 0.5], [1.0, 0.0], [0.2, 0.8]]])  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    stats = gate_statistics(probs, mask)
    assert stats["mean"] == pytest.approx([0.75, 0.25])
    assert stats["entropy"] == pytest.approx(math.log(2) / 2)  # (log 2 + 0) / 2 real tokens
    assert stats["max_entropy"] == pytest.approx(math.log(2))


def test_mix_by_hand():
    a, b = torch.full((1, 2, 3), 2.0), torch.full((1, 2, 3), -1.0)
    gate = torch.tensor([[[0.25, 0.75], [1.0, 0.0]]])
    out = mix([a, b], gate)
    assert torch.equal(out[0, 0], torch.full((3,), 2 * 0.25 - 0.75))
    assert torch.equal(out[0, 1], torch.full((3,), 2.0))


def test_mmoe_gates_token_vs_sentence_and_uniform_statistics(tasks, tokenizer, batch):
    model = make(tasks, tokenizer, "mmoe", experts=4)
    ids = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    model(*ids, batch["task_type_ids"], PRESENT)
    token_gate = model.last_gates["mlm"]["top"]  # (B, T, 4)
    sentence_gate = model.last_gates["sentence_distance"]["top"]
    assert torch.equal(sentence_gate, sentence_gate[:, :1].expand_as(sentence_gate))
    assert not torch.allclose(token_gate, token_gate[:, :1].expand_as(token_gate))
    with torch.no_grad():
        for gate in model.sharing.gates.values():
            gate.linear.weight.zero_()
    out = model(*ids, batch["task_type_ids"], PRESENT)
    stats = model.sharing_telemetry()["gates"]
    for task in PRESENT:
        assert stats[task]["top"]["mean"] == pytest.approx([0.25] * 4)
        assert stats[task]["top"]["entropy"] == pytest.approx(math.log(4), rel=1e-6)
    # Uniform gates: each task's output is the plain mean of the experts.
    shared = model.encoder(
        *ids[:1], attention_mask=ids[1], token_type_ids=ids[2], task_type_ids=batch["task_type_ids"]
    ).last_hidden_state
    from transformers.masking_utils import create_bidirectional_mask

    mask = create_bidirectional_mask(
        config=model.encoder.config, inputs_embeds=shared, attention_mask=ids[1]
    )
    mean = torch.stack([e(shared, mask) for e in model.sharing.experts]).mean(0)
    torch.testing.assert_close(out.for_task("mlm").sequence_output, mean)


def test_cross_stitch_matrices_and_identity_mixing(tasks, tokenizer, batch):
    model = make(tasks, tokenizer, "cross_stitch", stitch_self=0.7)
    stitch = model.sharing_telemetry()["stitch"]
    assert set(stitch) == {"layer0", "layer1"}
    for t in tasks:
        for s in tasks:
            assert stitch["layer0"][t][s] == pytest.approx(0.7 if t == s else 0.15)
    with torch.no_grad():
        for alpha in model.sharing.alpha:
            for key, value in alpha.items():
                t, s = key.split("__")
                value.fill_(1.0 if t == s else 0.0)
    ids = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    out = model(*ids, batch["task_type_ids"], PRESENT)
    shared = out.sequence_output
    from transformers.masking_utils import create_bidirectional_mask

    mask = create_bidirectional_mask(
        config=model.encoder.config, inputs_embeds=shared, attention_mask=ids[1]
    )
    for task in PRESENT:  # identity stitches: a task's own column only
        torch.testing.assert_close(
            out.for_task(task).sequence_output, model.sharing.columns[task](shared, mask)
        )


def test_soft_sharing_distance_and_penalty(tasks, tokenizer, batch):
    model = make(tasks, tokenizer, "soft", penalty=0.5)
    assert model.sharing_telemetry()["distance"] == pytest.approx(
        dict.fromkeys(tasks, 0.0), abs=1e-6
    )
    weight = model.sharing.columns["mlm"].layer[0].output.dense.weight
    with torch.no_grad():
        weight += 0.3  # column mlm moves by c = 0.3 on m entries; the mean moves by c / 3
    m, c, n = weight.numel(), 0.3, len(tasks)
    distance = model.sharing_telemetry()["distance"]
    assert distance["mlm"] == pytest.approx(c * (1 - 1 / n) * math.sqrt(m), rel=1e-4)
    assert distance[IDLE] == pytest.approx(c / n * math.sqrt(m), rel=1e-4)
    ids = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    out = model(*ids, batch["task_type_ids"], PRESENT)
    expected = 0.5 * m * c**2 * ((1 - 1 / n) ** 2 + (n - 1) / n**2)
    assert float(out.extra_loss) == pytest.approx(expected, rel=1e-4)


def test_task_moe_routes_by_task_top_k(tasks, tokenizer, batch):
    model = make(tasks, tokenizer, "task_moe", experts=3, top_k=2)
    with torch.no_grad():
        model.sharing.routes["mlm"].copy_(torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]]))
    ids = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    out = model(*ids, batch["task_type_ids"], ["mlm"])
    assert model.sharing_telemetry()["routes"]["mlm"] == {"layer0": [1, 2], "layer1": [0, 2]}
    w0 = [math.exp(2) / (math.exp(2) + math.e), math.e / (math.exp(2) + math.e)]
    gates = model.sharing_telemetry()["gates"]["mlm"]
    assert gates["layer0"]["mean"] == pytest.approx([0.0, *w0], rel=1e-6)
    shared = out.sequence_output
    from transformers.masking_utils import create_bidirectional_mask

    mask = create_bidirectional_mask(
        config=model.encoder.config, inputs_embeds=shared, attention_mask=ids[1]
    )
    x = shared
    for depth, (first, second) in enumerate(((1, 2), (0, 2))):
        a, _ = model.sharing.attention[depth](x, mask)
        logits = model.sharing.routes["mlm"][depth]
        w = torch.softmax(torch.stack([logits[first], logits[second]]), 0)
        experts = model.sharing.experts[depth]
        x = w[0] * experts[first](a) + w[1] * experts[second](a)
    torch.testing.assert_close(out.for_task("mlm").sequence_output, x)


def test_stack_is_the_encoders_own_layers(tasks, tokenizer, batch):
    torch.manual_seed(0)
    plain = build_model(ModelConfig(**TINY), tasks, len(tokenizer), tokenizer.pad_token_id)
    ids = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    plain.train(False)
    full = plain(*ids, batch["task_type_ids"]).sequence_output
    stack = Stack(list(plain.encoder.encoder.layer[1:]))
    plain.encoder.encoder.layer = plain.encoder.encoder.layer[:1]
    low = plain(*ids, batch["task_type_ids"]).sequence_output
    from transformers.masking_utils import create_bidirectional_mask

    mask = create_bidirectional_mask(
        config=plain.encoder.config, inputs_embeds=low, attention_mask=ids[1]
    )
    torch.testing.assert_close(stack(low, mask), full)


def test_config_checks(tasks, tokenizer):
    with pytest.raises(ConfigError, match="needs ZeRO stage 0-2"):
        config_from_dict({"sharing": {"kind": "mmoe"}, "train": {"zero_stage": 3}})
    assert config_from_dict({"sharing": {"kind": "hard"}, "train": {"zero_stage": 3}})
    with pytest.raises(ConfigError, match='did you mean "cgc"'):
        config_from_dict({"sharing": {"kind": "cgd"}})
    with pytest.raises(ConfigError, match="top_k"):
        config_from_dict({"sharing": {"kind": "task_moe", "experts": 2, "top_k": 3}})
    with pytest.raises(ConfigError, match=r"top_layers must lie in \[1, inf\)"):
        config_from_dict({"sharing": {"top_layers": 0}})
    with pytest.raises(ValueError, match=r"top_layers must be in \[1, 2\]"):
        build_model(
            ModelConfig(**TINY),
            tasks,
            len(tokenizer),
            tokenizer.pad_token_id,
            SharingConfig(kind="mmoe", top_layers=3),
        )


def test_export_round_trip_gives_the_tasks_route(tasks, tokenizer, batch, tmp_path):
    from ernie_cpt.model.sharing.export import load_task_route, save_sharing

    settings = SharingConfig(kind="cgc", top_layers=2)
    model = make(tasks, tokenizer, "cgc")
    assert save_sharing(make(tasks, tokenizer, "hard"), SharingConfig(), tmp_path) == []
    model.encoder.save_pretrained(str(tmp_path))  # the shared encoder, as AutoModel loads it
    assert save_sharing(model, settings, tmp_path) == ["sharing.safetensors", "sharing.json"]
    route = load_task_route(tmp_path, "sentence_distance")
    assert route.encoder.config.num_hidden_layers == 1
    model.train(False)
    ids = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    expected = model(*ids, batch["task_type_ids"], ["sentence_distance"])
    got = route(*ids, batch["task_type_ids"])
    torch.testing.assert_close(
        got.pooled_output, expected.for_task("sentence_distance").pooled_output
    )
    with pytest.raises(ValueError, match="has no route"):
        load_task_route(tmp_path, "ir_relevance")


# --- end to end (CLI) ---------------------------------------------------------------------------


def _losses(run_dir):
    from helpers import metrics

    return {r["step"]: (r["losses"], r.get("sharing")) for r in metrics(run_dir)}


@pytest.mark.slow
def test_stopped_and_resumed_mmoe_run_repeats_the_uninterrupted_one(tiny_config, tmp_path):
    from helpers import run_cli

    config = tiny_config(sharing={"kind": "mmoe", "experts": 3}, train={"grad_telemetry_every": 4})
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    run_cli("train", str(config), "--output-dir", str(reference))
    run_cli("train", str(config), "--output-dir", str(stopped), "--max-steps", "13")
    run_cli("train", str(config), "--output-dir", str(stopped), "--resume", "must")
    expected, got = _losses(reference), _losses(stopped)
    assert sorted(got) == list(range(1, 25)) and got == expected  # losses and gate statistics
    last = expected[24][1]  # the sharing telemetry of the last step
    assert set(last["gates"]) <= {"mlm", "sentence_distance"} and last["gates"]
    assert (reference / "export" / "sharing.json").exists()


@pytest.mark.slow
def test_adding_a_task_to_a_resumed_cgc_run_creates_its_gate_and_experts(tiny_config, tmp_path):
    from helpers import cli_env, metrics, run_cli

    first = [{"name": "words", "budgets": {"mlm": 6}}]
    second = first + [{"name": "pairs", "budgets": {"mlm": 3, "sentence_distance": 6}}]
    sharing = {"kind": "cgc", "shared_experts": 2}
    before = tiny_config(
        tasks={"mlm": {}}, schedule={"kind": "custom", "stages": first}, sharing=sharing
    )
    after = tiny_config(
        tasks={"mlm": {}, "sentence_distance": {}},
        schedule={"kind": "custom", "stages": second},
        sharing=sharing,
    )
    run_dir = tmp_path / "run"
    run_cli("train", str(before), "--output-dir", str(run_dir))
    rows_before = (run_dir / "metrics.jsonl").read_text().splitlines()
    # check=False: the final re-export into the run's own export/ is refused by export's
    # no-overwrite rule at the time of writing (the trainer's concern, not sharing's).
    resumed = run_cli(
        "train",
        str(after),
        "--output-dir",
        str(run_dir),
        "--resume",
        "must",
        env=cli_env(),
        check=False,
    )
    assert "added tasks ['sentence_distance']" in resumed.stderr
    # Its gate starts fresh; its own expert starts as the mean of the two shared experts.
    assert "model.sharing.level.gates.sentence_distance.linear.weight" in resumed.stderr
    assert (
        "new parameter model.sharing.level.own.sentence_distance.0.layer.0.output.dense.weight "
        "starts as the mean of 2 carried ones"
    ) in resumed.stderr
    rows = metrics(run_dir)
    assert (run_dir / "metrics.jsonl").read_text().splitlines()[:6] == rows_before
    added = [r for r in rows[6:] if "sentence_distance" in r["losses"]]
    assert len(added) == 6
    gates = added[-1]["sharing"]["gates"]["sentence_distance"]["top"]
    assert len(gates["mean"]) == 1 + 2  # its own expert + the shared ones


# --- comparison grid and report ------------------------------------------------------------------


def test_compare_plan_crosses_schedules_with_sharing_kinds(tmp_path):
    from ernie_cpt.experiments.compare import make_plan, parse_sharing, plan_runs

    config = config_from_dict({"tasks": {"mlm": {}, "sentence_distance": {}}})
    plain = make_plan(config, ["cmtl"], 1, None, tmp_path)
    assert "sharing" not in plain and [r["name"] for r in plain["runs"]] == ["cmtl-seed0"]
    plan = make_plan(config, ["cmtl", "multitask"], 1, None, tmp_path, ["hard", "mmoe"])
    names = [r["name"] for r in plan["runs"]]
    assert names == [
        "cmtl-hard-seed0",
        "cmtl-mmoe-seed0",
        "multitask-hard-seed0",
        "multitask-mmoe-seed0",
    ]
    spec = plan_runs(plan)[1]
    assert spec.variant == "cmtl+mmoe" and "sharing.kind=mmoe" in spec.overrides("g")
    assert plan["group"] != plain["group"]
    assert parse_sharing("hard, ple") == ["hard", "ple"] and parse_sharing("") == []
    with pytest.raises(ConfigError, match='did you mean "mmoe"'):
        parse_sharing("hard,mmeo")
    with pytest.raises(ConfigError, match="twice"):
        parse_sharing("ple,ple")


def test_gradient_conflict_and_gate_summary_by_hand():
    from ernie_cpt.experiments.architecture import gate_summary, gradient_conflict

    cos = [
        {"a": {"a": 1.0, "b": -0.2, "c": 0.4}, "b": {"a": -0.2, "b": 1.0, "c": 0.1}},
        {"a": {"a": 1.0, "b": -0.4, "c": 0.0}, "b": {"a": -0.4, "b": 1.0, "c": 0.3}},
    ]
    rows = [{"grad": {"cosine": c}} for c in cos] + [{"losses": {}}]
    out = gradient_conflict(rows)
    assert out["pairs"] == pytest.approx({"a|b": -0.3, "a|c": 0.2, "b|c": 0.2})
    assert out["most_conflicting"]["pair"] == ["a", "b"]
    gates = [
        {"sharing": {"gates": {"a": {"top": {"mean": [0.2, 0.8]}}}}},
        {
            "sharing": {
                "gates": {"a": {"top": {"mean": [0.4, 0.6]}}, "b": {"top": {"mean": [1.0, 0.0]}}}
            }
        },
        {"losses": {}},
    ]
    summary = gate_summary(gates)
    assert summary["gates"]["a"]["top"] == pytest.approx([0.3, 0.7])
    assert summary["gates"]["b"]["top"] == [1.0, 0.0]
    assert gate_summary(gates, tail=1)["gates"]["a"]["top"] == [0.4, 0.6]


def test_report_sharing_table_and_gate_heatmap(tmp_path):
    from ernie_cpt.experiments.report import gate_findings, plot_gates, sharing_table

    def arch(kind, params, speed, gates):
        return {
            "kind": kind,
            "parameters": params,
            "flops_per_token": 1000.0,
            "tokens_per_s": {"mean": speed},
            "gates": gates,
            "most_conflicting": {"pair": ["a", "b"], "cosine": -0.25},
        }

    summary = {
        "schedules": {
            "cmtl+hard": {"architecture": arch("hard", 100, 200.0, {})},
            "cmtl+mmoe": {
                "architecture": arch(
                    "mmoe",
                    150,
                    100.0,
                    {"a": {"top": [0.7, 0.3]}, "b": {"top": [0.6, 0.4]}, "c": {"top": [0.1, 0.9]}},
                )
            },
        }
    }
    lines = sharing_table(summary)
    assert lines[2].startswith("| cmtl+hard | 100 | 1,000 | 200.0 | 1.00 | a / b (-0.250) | - |")
    assert "| cmtl+mmoe | 150 | 1,000 | 100.0 | 0.50 |" in lines[3]
    assert gate_findings(summary["schedules"]["cmtl+mmoe"]["architecture"]["gates"]) == (
        "top e0: a (0.70), b (0.60); top e1: c (0.90)"
    )
    assert plot_gates(summary, tmp_path / "gates.png") and (tmp_path / "gates.png").stat().st_size
    hard_only = {"schedules": {"cmtl": {"architecture": arch("hard", 1, 1.0, {})}}}
    assert sharing_table(hard_only) == [] and not plot_gates(hard_only, tmp_path / "x.png")


@pytest.mark.parametrize(
    ("kind", "stage", "weighting"),
    [
        ("mmoe", 2, "pcgrad"),
        ("soft", 2, "gradnorm"),
        ("task_moe", 1, "famo"),
        ("ple", 2, "rlw"),
        ("cross_stitch", 1, "uncertainty"),
        ("cgc", 0, "dwa"),
    ],
)
def test_deepspeed_steps_every_kind_with_a_weighting(
    distributed, kind, stage, weighting, tasks, tokenizer, batch
):
    """ZeRO 0-2 on CPU: the engine's gradients are the module's, and it steps."""
    import copy

    from deepspeed.utils import safe_get_full_grad

    from ernie_cpt.training.weighting import build_weighting

    model = make(tasks, tokenizer, kind)
    module = TrainModule(model, tasks, {weighting: build_weighting(weighting, list(tasks))})
    reference = copy.deepcopy(module)
    config = {
        "train_micro_batch_size_per_gpu": 6,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
        "zero_optimization": {"stage": stage},
    }
    engine, *_ = distributed.initialize(
        model=module, model_parameters=module.parameters(), config=config
    )
    before = {n: p.detach().clone() for n, p in module.model.sharing.named_parameters()}
    total, _, weights = engine(batch, list(PRESENT), 0, weighting)
    engine.backward(total)
    expected, _, _ = reference(batch, list(PRESENT), 0, weighting)
    expected.backward()
    assert torch.isfinite(total) and set(weights) == set(PRESENT)
    for (name, p), q in zip(engine.module.named_parameters(), reference.parameters(), strict=True):
        got = safe_get_full_grad(p) if stage else p.grad
        want = q.grad if q.grad is not None else torch.zeros_like(q)  # DeepSpeed fills zeros
        got = got if got is not None else torch.zeros_like(q)
        torch.testing.assert_close(got.float(), want, rtol=1e-4, atol=1e-6, msg=name)
    engine.step()
    moved = [n for n, p in module.model.sharing.named_parameters() if not torch.equal(p, before[n])]
    assert moved


def test_sharing_telemetry_as_wandb_scalars():
    from ernie_cpt.training.run_log import flat_metrics

    row = {
        "stage": 0,
        "lr": 1e-3,
        "losses": {"a": 1.0},
        "tokens_per_s": 5.0,
        "tokens": 10,
        "sharing": {
            "gates": {"a": {"top": {"mean": [0.25, 0.75], "entropy": 0.5, "max_entropy": 0.69}}},
            "stitch": {"layer0": {"a": {"a": 0.9, "b": 0.1}}},
            "distance": {"a": 0.125},
        },
    }
    flat = flat_metrics(row)
    assert {k: v for k, v in flat.items() if k.startswith("sharing/")} == {
        "sharing/gate/a/top/e0": 0.25,
        "sharing/gate/a/top/e1": 0.75,
        "sharing/gate/a/top/entropy": 0.5,
        "sharing/stitch/layer0/a/a": 0.9,
        "sharing/stitch/layer0/a/b": 0.1,
        "sharing/distance/a": 0.125,
    }
