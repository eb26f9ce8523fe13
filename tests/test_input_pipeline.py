"""The input pipeline: batches built ahead, identical to building them in the step; cursors
move only when a batch is taken; one masked-LM task per sentence batch; idle heads get no
pass and no change at ZeRO 0, 1 and 2."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset

from ernie_cpt.data.task_stream import TaskStream
from ernie_cpt.training.input_pipeline import InputPipeline, Prepared
from ernie_cpt.training.step import attached_tasks


def streams() -> dict[str, TaskStream]:
    data = Dataset.from_dict({"input_ids": [[i] * (1 + i % 7) for i in range(40)]})
    return {name: TaskStream(data, name, 4, seed=9, bucket_size=3) for name in ("a", "b")}


def builder(stream_map: dict[str, TaskStream], calls: list) -> object:
    """Batch = (task, stage tasks, cursor, indices): what a real build is a function of."""

    def build(task: str, stage_tasks: tuple[str, ...], cursor: tuple[int, int]) -> Prepared:
        calls.append((task, cursor))
        indices, after = stream_map[task].peek(cursor)
        batch = {"indices": torch.tensor(indices)}
        return Prepared(batch, [task, *stage_tasks], len(indices), after)

    return build


def draw(pipeline: InputPipeline, plan: list[tuple[str, tuple[str, ...]]]) -> list:
    out = []
    for task, stage in plan:
        p = pipeline.take(task, stage)
        out.append((p.batch["indices"].tolist(), p.names, p.after))
    return out


PLAN = [("a", ("a", "b"))] * 3 + [("b", ("a", "b")), ("a", ("a",)), ("b", ("b",))] * 4


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_prefetched_batches_equal_batches_built_in_the_step(depth):
    plain_streams, ahead_streams = streams(), streams()
    plain = InputPipeline(plain_streams, builder(plain_streams, []), depth=0)
    ahead = InputPipeline(ahead_streams, builder(ahead_streams, []), depth=depth)
    try:
        assert draw(ahead, PLAN) == draw(plain, PLAN)
    finally:
        ahead.close()
    assert {n: s.state() for n, s in ahead_streams.items()} == {
        n: s.state() for n, s in plain_streams.items()
    }


def test_cursor_moves_only_when_a_batch_is_taken_and_resume_continues():
    stream_map, calls = streams(), []
    pipeline = InputPipeline(stream_map, builder(stream_map, calls), depth=2)
    try:
        first = draw(pipeline, PLAN[:5])
        pipeline.fill("a", ("a",))
        taken_a = sum(1 for task, _ in PLAN[:5] if task == "a")
        # a checkpoint now saves the position after the taken batches, not the prepared ones
        expected = (0, 0)
        for _ in range(taken_a):
            expected = stream_map["a"].peek(expected)[1]
        assert (stream_map["a"].epoch, stream_map["a"].position) == expected
        saved = {n: s.state() for n, s in stream_map.items()}
        rest = draw(pipeline, PLAN[5:])
        # the batches queued after the last take: built ahead (before close cancels them,
        # which it may do before the thread starts them when not waited for)
        ahead = [future.result() for queue in pipeline.pending.values() for _, future in queue]
        assert ahead
    finally:
        pipeline.close()
    resumed = streams()
    for name, state in saved.items():
        resumed[name].load_state(state)
    again = InputPipeline(resumed, builder(resumed, []), depth=2)
    try:
        assert draw(again, PLAN[5:]) == rest
    finally:
        again.close()
    assert len(first) == 5
    assert len(calls) > len(PLAN)  # built ahead (and some dropped at stage changes)


def test_one_masked_lm_task_attached_to_a_sentence_batch():
    kinds = {
        "sent": SimpleNamespace(level="sentence", masks_inputs=False),
        "km": SimpleNamespace(level="token", masks_inputs=True),
        "cap": SimpleNamespace(level="token", masks_inputs=False),
        "mlm": SimpleNamespace(level="token", masks_inputs=True),
    }
    run = SimpleNamespace(
        data=SimpleNamespace(tasks=kinds),
        config=SimpleNamespace(
            train=SimpleNamespace(combine_token_tasks=True),
            tasks={"mlm": {}, "sent": {}, "km": {}, "cap": {}},
        ),
    )
    # the first masking task of the config's order, wherever the stage lists it
    assert attached_tasks(run, "sent", ("mlm", "km", "cap", "sent")) == ["mlm", "cap"]
    assert attached_tasks(run, "sent", ("km", "sent", "mlm", "cap")) == ["mlm", "cap"]
    assert attached_tasks(run, "sent", ("km", "sent", "cap")) == ["km", "cap"]
    assert attached_tasks(run, "mlm", ("mlm", "km", "sent")) == []


@pytest.mark.parametrize("zero_stage", [0, 1, 2])
def test_idle_heads_get_no_pass_and_stay_unchanged(
    distributed, tokenizer, documents, corpus_view, zero_stage
):
    from ernie_cpt.config import ModelConfig, TrainConfig
    from ernie_cpt.model import build_model
    from ernie_cpt.training.engine import build_engine
    from ernie_cpt.training.train_module import TrainModule
    from ernie_cpt.training.weighting import build_weighting
    from pretrain_tasks import build_task
    from pretrain_tasks.base import SkipDocument
    from pretrain_tasks.contract import columnar

    names = ("mlm", "sentence_distance", "capitalization")
    tasks = {n: build_task(n, {}, tokenizer, 64) for n in names}
    torch.manual_seed(0)
    model_config = ModelConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = build_model(model_config, tasks, len(tokenizer), tokenizer.pad_token_id)
    module = TrainModule(model, tasks, {"fixed": build_weighting("fixed", names, {})})
    train = TrainConfig(
        micro_batch_size=4,
        zero_stage=zero_stage,
        weight_decay=0.0,
        lr=1e-2,
        warmup_steps=1,
        lr_decay="constant",
    )
    engine = build_engine(module, train, total_steps=10, world_size=1)
    rows = []
    for document in documents:
        try:
            rows += tasks["mlm"].build_examples(document, corpus_view, random.Random(0))
        except SkipDocument:
            continue
    rows = rows[:4]
    calls = {n: 0 for n in names}
    for n in names:
        model.heads[n].register_forward_hook(lambda *a, n=n: calls.__setitem__(n, calls[n] + 1))
    before = {n: [p.detach().clone() for p in model.heads[n].parameters()] for n in names}
    for step in range(3):
        batch = tasks["mlm"].collate(
            columnar(rows, ["input_ids", "token_type_ids", "word_starts"]),
            torch.Generator().manual_seed(step),
        )
        batch["task_type_ids"] = torch.zeros_like(batch["input_ids"])
        loss, _, _ = engine(batch, ["mlm"], step, "fixed")
        engine.backward(loss)
        engine.step()
    assert calls == {"mlm": 3, "sentence_distance": 0, "capitalization": 0}
    from deepspeed.utils import safe_get_full_fp32_param

    def full(p: torch.Tensor) -> torch.Tensor:  # ZeRO 1-2: the fp32 master copy
        return p.detach() if zero_stage == 0 else safe_get_full_fp32_param(p)

    for n in ("sentence_distance", "capitalization"):
        for p, old in zip(model.heads[n].parameters(), before[n], strict=True):
            assert torch.equal(full(p), old)
    moved = [p for p in model.heads["mlm"].dense.parameters()]
    assert not torch.equal(full(moved[0]), before["mlm"][0])
