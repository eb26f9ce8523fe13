"""The one contract every registered pre-training task must pass (default options, tiny encoder).

Parametrized over ``pretrain_tasks.TASKS``: a task registered there is tested here with no
further code. Checks: class attributes, examples and their declared columns, determinism,
collation, head and loss through a shared encoder, gradient flow to the word embeddings,
summable statistics and metrics, the idle-head probe, and ``attach`` for token tasks.
"""

from __future__ import annotations

import inspect
import math
import random
from dataclasses import is_dataclass
from pathlib import Path

import pytest
import torch

import pretrain_tasks
from pretrain_tasks.base import FAMILIES, LEVELS, SkipDocument, stable_seed

MAX_SEQ_LENGTH = 64
SHARED_COLUMNS = ("input_ids", "token_type_ids", "word_starts")
BATCH_SIZE = 8
TASK_NAMES = sorted(pretrain_tasks.TASKS)
TOKEN_TASK_NAMES = [name for name in TASK_NAMES if pretrain_tasks.TASKS[name].level == "token"]


def build_all(task, documents, corpus, seed: int = 0) -> list[dict]:
    """Examples of every fixture document (skipped ones must give a reason)."""
    examples = []
    for document in documents:
        rng = random.Random(stable_seed(seed, task.name, document.id))
        try:
            examples += task.build_examples(document, corpus, rng)
        except SkipDocument as skip:
            assert isinstance(skip.reason, str) and skip.reason
    return examples


def columnar(examples: list[dict], names) -> dict[str, list]:
    return {name: [example[name] for example in examples] for name in names}


def check_column(kind: str, value, length: int) -> None:
    if kind == "int":
        assert isinstance(value, int) and not isinstance(value, bool)
    elif kind == "int_list":
        assert len(value) == length and all(isinstance(v, int) for v in value)
    elif kind == "float":
        assert isinstance(value, (int, float)) and math.isfinite(value)
    elif kind == "str":
        assert isinstance(value, str)
    else:
        raise AssertionError(f"unknown column kind {kind!r}")


@pytest.fixture(scope="module", params=TASK_NAMES)
def prepared(request, tokenizer, documents, corpus_view):
    """(task, examples) for one registered task with default options."""
    task = pretrain_tasks.build_task(request.param, {}, tokenizer, MAX_SEQ_LENGTH)
    return task, build_all(task, documents, corpus_view)


def test_class_attributes(prepared) -> None:
    task, _ = prepared
    cls = type(task)
    assert cls.family in FAMILIES
    assert cls.level in LEVELS
    assert pretrain_tasks.TASKS[cls.name] is cls
    assert Path(inspect.getfile(cls)).stem == cls.name
    assert is_dataclass(cls.Settings) and isinstance(task.settings, cls.Settings)
    assert isinstance(task.num_labels, int) and task.num_labels >= 1
    assert isinstance(task, pretrain_tasks.PretrainTask)


def test_examples_have_declared_columns(prepared) -> None:
    task, examples = prepared
    assert examples, "the fixture documents must give at least one example"
    declared = task.example_columns()
    assert all(kind in ("int", "int_list", "float", "str") for kind in declared.values())
    for example in examples:
        length = len(example["input_ids"])
        assert 2 <= length <= MAX_SEQ_LENGTH
        for name in SHARED_COLUMNS:
            check_column("int_list", example[name], length)
        for name, kind in declared.items():
            check_column(kind, example[name], length)
    counts = task.label_counts(columnar(examples, [*SHARED_COLUMNS, *declared]))
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in counts.items())


def test_same_seed_same_examples(prepared, documents, corpus_view) -> None:
    task, examples = prepared
    assert build_all(task, documents, corpus_view) == examples


def test_collate_loss_backward_metrics(prepared, encoder_config) -> None:
    from transformers import ErnieModel

    from ernie_cpt.model import MultiTaskModel

    task, examples = prepared
    names = [*SHARED_COLUMNS, *task.example_columns()]
    torch.manual_seed(0)
    model = MultiTaskModel(ErnieModel(encoder_config), {task.name: task.build_head(encoder_config)})
    generator = torch.Generator().manual_seed(0)
    total, summed, sample_sizes = 0.0, {}, []
    for start in range(0, len(examples), BATCH_SIZE):
        batch = task.collate(columnar(examples[start : start + BATCH_SIZE], names), generator)
        assert batch["input_ids"].shape == batch["attention_mask"].shape
        assert batch["input_ids"].shape == batch["token_type_ids"].shape
        encoded = model(
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            torch.zeros_like(batch["input_ids"]),
        )
        loss = task.loss(model.heads[task.name], encoded, batch)
        assert torch.isfinite(loss.loss_sum) and torch.isfinite(loss.mean())
        sample_sizes.append(int(loss.sample_size))
        total = total + loss.mean()
        for key, value in loss.stats.items():
            value = float(value.detach()) if torch.is_tensor(value) else float(value)
            summed[key] = summed.get(key, 0.0) + value
        probe = model.heads[task.name](encoded.pooled_output[:1].detach())  # (1, H) idle probe
        assert torch.is_tensor(probe) and probe.shape[0] == 1
    assert max(sample_sizes) > 0
    total.backward()
    grad = model.encoder.embeddings.word_embeddings.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    metrics = task.metrics(summed)
    assert metrics and all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), (
        metrics
    )


@pytest.mark.parametrize("name", TOKEN_TASK_NAMES)
def test_token_task_attaches_to_another_batch(name, tokenizer, documents, corpus_view) -> None:
    task = pretrain_tasks.build_task(name, {}, tokenizer, MAX_SEQ_LENGTH)
    assert callable(getattr(task, "attach", None)), "token-level tasks must implement attach"
    host = pretrain_tasks.build_task("sentence_distance", {}, tokenizer, MAX_SEQ_LENGTH)
    host_examples = build_all(host, documents, corpus_view)[:BATCH_SIZE]
    columns = columnar(host_examples, [*SHARED_COLUMNS, *host.example_columns()])
    generator = torch.Generator().manual_seed(0)
    batch = host.collate(columns, generator)
    shape = batch["input_ids"].shape
    attached = task.attach(batch, columns, generator)
    assert isinstance(attached, bool)
    if attached:
        assert batch[f"{task.name}_labels"].shape == shape
        assert batch["input_ids"].shape == shape
