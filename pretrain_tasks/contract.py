"""The task contract as a runnable check: ``check_task(task, tokenizer, documents)``.

A plug-in author runs it on their own task (in a test, or once by hand) before installing
it; the built-in tasks are checked by ``tests/test_task_contract.py`` with the same
function. It builds examples from ``documents``, collates them, runs a tiny transformers
encoder plus the task's head, back-propagates, and attaches token-level tasks to a batch
of plain sentence pairs. Every failed rule raises ``ContractError`` naming the task and the
rule; on success it returns a ``ContractReport``.

Rules checked (see ``base.PretrainTask``):

- class: name/family/level/masks_inputs/Settings/``attach`` (``check_task_class``); the
  constructor ``Task(settings, tokenizer, max_seq_length)``; ``num_labels`` an int >= 1;
- examples: exactly the shared columns plus ``example_columns()``, each of its declared
  kind (int lists as long as ``input_ids``), 2..max_seq_length tokens, ids inside the
  vocabulary, ``word_starts``/``token_type_ids`` in {0, 1}; skipped documents give a
  non-empty reason; the same seed gives the same examples;
- collation: one row per example, padded to the longest, ``attention_mask`` counting each
  example's tokens; the same generator seed gives the same batch;
- loss: finite, scalar statistics, a positive sample count somewhere, gradients reaching
  the word embeddings; the head accepts the idle-head probe (pooled output, (1, H));
- read positions (when the task has ``read_positions``): flat positions inside the batch,
  and the loss does not change when every other row of the sequence output (and so the
  pooled output, unless [CLS] rows are declared) is replaced by noise;
- metrics: finite floats; ``accuracy`` equals summed ``correct`` / ``count`` when a task
  reports them; ``label_counts`` maps label names to ints >= 0;
- attach (token level): False leaves the batch untouched; True keeps its shape, adds only
  keys prefixed with the task name (and ``masking.MASKED_POSITIONS``); a task with
  ``masks_inputs = False`` never changes ``input_ids``; one with ``masks_inputs = True``
  leaves positions already in ``MASKED_POSITIONS`` alone and records every token it changed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import torch
from torch import Tensor

from pretrain_tasks import check_task_class
from pretrain_tasks.base import (
    ColumnKind,
    Encoded,
    SkipDocument,
    collate_inputs,
    declared_positions,
    stable_seed,
)
from pretrain_tasks.document import Document
from pretrain_tasks.masking import MASKED_POSITIONS
from pretrain_tasks.packing import encode_pair

SHARED_COLUMNS = ("input_ids", "token_type_ids", "word_starts")
COLUMN_KINDS = get_args(ColumnKind)


class ContractError(AssertionError):
    """A task that breaks the contract; the message names the task and the rule."""


@dataclass
class ContractReport:
    """What the check exercised, for the author to read (and assert on, if they wish)."""

    task: str
    examples: int
    skipped: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    attached: bool | None = None  # token-level tasks: did attach label the host batch


class ListCorpus:
    """A ``CorpusView`` over a list of documents (when the caller passes none)."""

    def __init__(self, documents: Sequence[Document], split: str = "train") -> None:
        pairs = [(s, d.id) for d in documents for s in d.sentences()]
        self.sentences = [s for s, _ in pairs]
        self.document_ids = [i for _, i in pairs]
        self.split = split
        self.heldout_fraction = 0.0

    def random_sentence(self, rng: random.Random, exclude_document: str) -> str | None:
        """A uniformly drawn sentence of another document (None if there is none)."""
        others = [
            s
            for s, i in zip(self.sentences, self.document_ids, strict=True)
            if i != exclude_document
        ]
        return rng.choice(others) if others else None


def _require(condition: bool, task: str, rule: str) -> None:
    if not condition:
        raise ContractError(f"task {task!r}: {rule}")


def _instantiate(task_or_cls: Any, tokenizer: Any, max_seq_length: int, options: Any) -> Any:
    """The task instance; a class is built with ``Settings(**options)`` as the registry does."""
    if isinstance(task_or_cls, type):
        cls = task_or_cls
        check_task_class(cls)
        try:
            return cls(cls.Settings(**dict(options or {})), tokenizer, max_seq_length)
        except TypeError as error:
            raise ContractError(
                f"task {cls.name!r}: the constructor must be "
                f"{cls.__name__}(settings, tokenizer, max_seq_length): {error}"
            ) from error
    check_task_class(type(task_or_cls))
    return task_or_cls


def build_all(
    task: Any, documents: Sequence[Document], corpus: Any, seed: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Examples of every document (seeded per document) and the skip reasons counted."""
    examples: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    for document in documents:
        rng = random.Random(stable_seed(seed, task.name, document.id))
        try:
            examples += task.build_examples(document, corpus, rng)
        except SkipDocument as skip:
            _require(isinstance(skip.reason, str) and bool(skip.reason), task.name, "skip reason")
            skipped[skip.reason] = skipped.get(skip.reason, 0) + 1
    return examples, skipped


def _check_value(task: str, column: str, kind: str, value: Any, length: int) -> None:
    rule = f"column {column!r} must hold {kind}, got {value!r}"
    if kind == "int":
        _require(isinstance(value, int) and not isinstance(value, bool), task, rule)
    elif kind == "int_list":
        ok = isinstance(value, (list, tuple)) and len(value) == length
        _require(ok and all(type(v) is int for v in value), task, rule + f" of length {length}")
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        _require(ok and math.isfinite(value), task, rule)
    else:
        _require(isinstance(value, str), task, rule)


def check_examples(
    task: Any, examples: Sequence[Mapping[str, Any]], max_seq_length: int, vocab_size: int
) -> None:
    """Columns, kinds, lengths and value ranges of every example."""
    name = task.name
    declared = task.example_columns()
    _require(isinstance(declared, dict), name, "example_columns() must return a dict")
    for column, kind in declared.items():
        _require(
            kind in COLUMN_KINDS, name, f"column {column!r}: kind {kind!r} not in {COLUMN_KINDS}"
        )
        _require(column.startswith(name), name, f"column {column!r} must start with the task name")
    expected = {*SHARED_COLUMNS, *declared}
    for example in examples:
        _require(
            set(example) == expected,
            name,
            f"example columns {sorted(example)} != {sorted(expected)}",
        )
        length = len(example["input_ids"])
        _require(
            2 <= length <= max_seq_length, name, f"{length} tokens, not in 2..{max_seq_length}"
        )
        for column in SHARED_COLUMNS:
            _check_value(name, column, "int_list", example[column], length)
        _require(all(0 <= t < vocab_size for t in example["input_ids"]), name, "ids in vocabulary")
        for column in ("word_starts", "token_type_ids"):
            _require(set(example[column]) <= {0, 1}, name, f"{column} values in {{0, 1}}")
        for column, kind in declared.items():
            _check_value(name, column, kind, example[column], length)


def columnar(examples: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, list]:
    """Row examples -> the columnar form ``collate`` receives."""
    return {name: [example[name] for example in examples] for name in names}


def _same_batch(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def tiny_encoder(tokenizer: Any, max_seq_length: int, seed: int) -> tuple[Any, Any]:
    """(transformers ErnieModel, its config): hidden 32, 2 layers, the tokenizer's vocabulary."""
    from transformers import ErnieConfig, ErnieModel

    config = ErnieConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max(64, max_seq_length),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return ErnieModel(config), config


def _encode(encoder: Any, batch: Mapping[str, Tensor]) -> Encoded:
    out = encoder(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
    )
    return Encoded(out.last_hidden_state, out.pooler_output)  # (B, T, H), (B, H)


def _check_batch(task: Any, batch: Mapping[str, Tensor], rows: Sequence[Mapping]) -> None:
    """One row per example, padded to the longest; attention_mask counts each row's tokens."""
    lengths = torch.tensor([len(r["input_ids"]) for r in rows])
    shape = (len(rows), int(lengths.max()))
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        _require(tuple(batch[key].shape) == shape, task.name, f"batch[{key!r}] shape {shape}")
    _require(torch.equal(batch["attention_mask"].sum(1), lengths), task.name, "attention_mask")


def check_read_positions(
    task: Any, head: Any, encoder: Any, encoded: Encoded, batch: Mapping[str, Tensor]
) -> None:
    """The loss reads the sequence output only at ``task.read_positions(batch)`` (if any)."""
    rows = declared_positions(task, batch)
    if rows is None:
        return
    sequence = encoded.sequence_output.detach()
    flat = sequence.reshape(-1, sequence.shape[-1])
    _require(
        rows.dim() == 1 and bool(((rows >= 0) & (rows < len(flat))).all()),
        task.name,
        "read_positions: flat positions into (B*T)",
    )
    keep = torch.zeros(len(flat), 1, dtype=torch.bool)
    keep[rows] = True
    noise = torch.randn(flat.shape, generator=torch.Generator().manual_seed(0)) * 3
    noised = torch.where(keep, flat, noise).view_as(sequence)
    was_training = head.training
    head.train(False)  # no dropout: the two losses must be comparable
    try:
        with torch.no_grad():
            plain = task.loss(head, Encoded(sequence, encoder.pooler(sequence)), batch)
            other = task.loss(head, Encoded(noised, encoder.pooler(noised)), batch)
    finally:  # a loss that raises must not leave the caller's head switched
        head.train(was_training)
    _require(
        torch.allclose(plain.loss_sum, other.loss_sum, rtol=1e-5, atol=1e-6),
        task.name,
        "the loss reads only the rows read_positions declares",
    )


def run_batches(
    task: Any, examples: Sequence[Mapping[str, Any]], batch_size: int, seed: int, tokenizer: Any
) -> tuple[dict[str, float], int]:
    """Collate, encode, loss and backward over all examples; the summed stats and batches."""
    names = [*SHARED_COLUMNS, *task.example_columns()]
    encoder, config = tiny_encoder(tokenizer, max(len(e["input_ids"]) for e in examples), seed)
    head = task.build_head(config)
    if getattr(head, "tie_to_word_embeddings", False):
        head.decoder.weight = encoder.embeddings.word_embeddings.weight
    summed: dict[str, float] = {}
    total, sample_sizes, batches = None, [], 0
    for start in range(0, len(examples), batch_size):
        rows = examples[start : start + batch_size]
        batch = task.collate(columnar(rows, names), torch.Generator().manual_seed(seed + start))
        again = task.collate(columnar(rows, names), torch.Generator().manual_seed(seed + start))
        _require(_same_batch(batch, again), task.name, "same generator seed, same batch")
        _check_batch(task, batch, rows)
        encoded = _encode(encoder, batch)
        loss = task.loss(head, encoded, batch)
        _require(bool(torch.isfinite(loss.loss_sum)), task.name, "finite loss")
        sample_sizes.append(int(loss.sample_size))
        total = loss.mean() if total is None else total + loss.mean()
        for key, value in loss.stats.items():
            _require(torch.as_tensor(value).dim() == 0, task.name, f"stat {key!r} is a scalar")
            summed[key] = summed.get(key, 0.0) + float(torch.as_tensor(value).detach())
        check_read_positions(task, head, encoder, encoded, batch)
        probe = head(encoded.pooled_output[:1].detach())  # the idle-head probe, (1, H)
        _require(torch.is_tensor(probe) and probe.shape[0] == 1, task.name, "idle-head probe")
        batches += 1
    _require(max(sample_sizes) > 0, task.name, "some batch must hold a labelled sample")
    total.backward()
    grad = encoder.embeddings.word_embeddings.weight.grad
    _require(
        grad is not None and bool(grad.abs().sum() > 0), task.name, "gradient reaches embeddings"
    )
    return summed, batches


def check_metrics(task: Any, summed: Mapping[str, float], columns: Mapping[str, list]) -> dict:
    """Finite float metrics; accuracy = correct / count exactly; label counts are ints >= 0."""
    metrics = task.metrics(summed)
    _require(bool(metrics), task.name, "metrics() must not be empty")
    for key, value in metrics.items():
        _require(type(value) is float and math.isfinite(value), task.name, f"metric {key!r}")
    if "accuracy" in metrics and "correct" in summed and "count" in summed:
        expected = summed["correct"] / max(summed["count"], 1.0)
        _require(math.isclose(metrics["accuracy"], expected, rel_tol=1e-12), task.name, "accuracy")
    counts = task.label_counts(columns)
    for key, value in counts.items():
        ok = isinstance(key, str) and type(value) is int and value >= 0
        _require(ok, task.name, f"label_counts[{key!r}] = {value!r}")
    return metrics


def host_batch(
    tokenizer: Any, documents: Sequence[Document], max_seq_length: int, size: int
) -> tuple[dict[str, Tensor], dict[str, list]]:
    """A batch of another (sentence-pair) task: consecutive sentences, shared columns only."""
    rows = [
        encode_pair(tokenizer, a, b, max_seq_length)
        for d in documents
        for a, b in zip(d.sentences(), d.sentences()[1:], strict=False)
    ][:size]
    columns = columnar(rows, SHARED_COLUMNS)
    return collate_inputs(columns, tokenizer.pad_token_id), columns


def check_attach(task: Any, tokenizer: Any, documents: Sequence[Document], seed: int) -> bool:
    """Attach the task to a batch of plain sentence pairs; see the module's rules."""
    batch, columns = host_batch(tokenizer, documents, 64, 8)
    _require(len(columns["input_ids"]) > 0, task.name, "documents must give sentence pairs")
    real = batch["attention_mask"].bool()
    if task.masks_inputs:  # another masking task already masked every third real token
        batch[MASKED_POSITIONS] = real & (torch.arange(real.shape[1]) % 3 == 1)
    before = {k: v.clone() for k, v in batch.items()}
    attached = task.attach(batch, columns, torch.Generator().manual_seed(seed))
    _require(isinstance(attached, bool), task.name, "attach returns a bool")
    if not attached:
        _require(_same_batch(batch, before), task.name, "attach -> False leaves the batch alone")
        return False
    added = set(batch) - set(before)
    extra = [k for k in added if not k.startswith(task.name) and k != MASKED_POSITIONS]
    _require(not extra, task.name, f"attach may add only keys named after the task, got {extra}")
    _require(batch["input_ids"].shape == before["input_ids"].shape, task.name, "shape kept")
    changed = batch["input_ids"] != before["input_ids"]
    if not task.masks_inputs:
        _require(not bool(changed.any()), task.name, "masks_inputs = False: input_ids unchanged")
        _require(MASKED_POSITIONS not in added, task.name, "masks_inputs = False: no mask record")
        return True
    old, new = before[MASKED_POSITIONS], batch.get(MASKED_POSITIONS, before[MASKED_POSITIONS])
    _require(not bool((changed & old).any()), task.name, "already-masked positions untouched")
    _require(bool((new >= old).all() and (new >= changed).all()), task.name, "record masks")
    return True


def check_task(
    task_or_cls: Any,
    tokenizer: Any,
    documents: Sequence[Document],
    corpus: Any = None,
    *,
    options: Mapping[str, Any] | None = None,
    max_seq_length: int = 64,
    batch_size: int = 8,
    seed: int = 0,
) -> ContractReport:
    """Check a task (class, built with ``options``, or instance) against the contract.

    ``documents`` should give the task examples (several documents of a few paragraphs);
    ``corpus`` defaults to a ``ListCorpus`` of them. Raises ``ContractError`` on a broken
    rule; returns what was exercised.
    """
    task = _instantiate(task_or_cls, tokenizer, max_seq_length, options)
    name = task.name
    _require(isinstance(task.settings, task.Settings), name, "settings is a Settings instance")
    _require(type(task.num_labels) is int and task.num_labels >= 1, name, "num_labels int >= 1")
    corpus = corpus if corpus is not None else ListCorpus(documents)
    examples, skipped = build_all(task, documents, corpus, seed)
    _require(bool(examples), name, "the documents must give at least one example")
    _require(
        build_all(task, documents, corpus, seed)[0] == examples, name, "same seed, same examples"
    )
    check_examples(task, examples, max_seq_length, len(tokenizer))
    summed, batches = run_batches(task, examples, batch_size, seed, tokenizer)
    columns = columnar(examples, [*SHARED_COLUMNS, *task.example_columns()])
    metrics = check_metrics(task, summed, columns)
    attached = check_attach(task, tokenizer, documents, seed) if task.level == "token" else None
    return ContractReport(name, len(examples), skipped, batches, metrics, attached)
