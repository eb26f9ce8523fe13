"""The contract every pre-training task implements, and the helpers tasks share.

A task is a data builder plus a head and a loss (fairseq's task + criterion in one small
class). Pure, seeded helpers come first; the Protocol (``PretrainTask``) last. Tasks know
nothing of schedules, ranks or DeepSpeed, and no task module imports another: what several
tasks share lives in ``packing`` (segments and shared columns), ``spans`` (words and
character spans), ``masking`` (input masking and the masked-LM head) and here.
``pretrain_tasks.contract.check_task`` checks a task against this contract.

Example columns shared by all tasks: ``input_ids``, ``token_type_ids`` and ``word_starts``
(1 on the first sub-token of each word, 0 elsewhere and on special tokens), so token-level
tasks can attach their labels to any task's batch (the paper's one-forward multi-task step).
Task-specific columns are prefixed with the task name, e.g. ``sentence_distance_label``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple, Protocol, get_args, runtime_checkable

import torch
from torch import Tensor, nn

from pretrain_tasks.document import Document
from schedules.options import build_settings

IGNORE_INDEX = -100
Family = Literal["baseline", "word-aware", "structure-aware", "semantic-aware"]
Level = Literal["token", "sentence"]
# The type of a task-specific example column: an int, an int per token (same length as
# ``input_ids``), a float, or a string.
ColumnKind = Literal["int", "int_list", "float", "str"]
FAMILIES: tuple[str, ...] = get_args(Family)
LEVELS: tuple[str, ...] = get_args(Level)
COLUMN_KINDS: tuple[str, ...] = get_args(ColumnKind)


class SkipDocument(Exception):
    """Raised by ``build_examples`` when a document cannot give examples; the reason is counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Encoded(NamedTuple):
    """What the shared encoder gives the heads."""

    sequence_output: Tensor  # (B, T, H)
    pooled_output: Tensor  # (B, H)


@dataclass(frozen=True)
class TaskLoss:
    """A loss summed over ``sample_size`` samples, plus summable statistics for metrics."""

    loss_sum: Tensor
    sample_size: Tensor
    stats: dict[str, Tensor]

    def mean(self) -> Tensor:
        """Loss per sample (0 when the batch holds no sample of this task)."""
        return self.loss_sum / self.sample_size.clamp(min=1)


class CorpusView(Protocol):
    """Corpus-wide facts a builder may use besides its own document.

    ``split`` is "train" or "heldout"; ``heldout_fraction`` is the share of user-supplied rows
    (see ``UserRows``) that belong to the held-out split.
    """

    split: str
    heldout_fraction: float
    document_ids: Sequence[str]

    def random_sentence(self, rng: random.Random, exclude_document: str) -> str | None:
        """A sentence drawn from a document other than ``exclude_document`` (None if none)."""
        ...


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from parts, stable across processes (unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def settings_from_options(settings_cls: type, options: Mapping[str, Any], task: str) -> Any:
    """Build a task's Settings dataclass as config sections are built: unknown option names
    (with a hint), wrong types and out-of-range values are errors naming ``tasks.<task>``."""
    return build_settings(settings_cls, options, f"tasks.{task}")


def row_split(salt: str, row: int, heldout_fraction: float) -> str:
    """ "train" or "heldout" for a user row, by a stable hash (independent of the corpus)."""
    return (
        "heldout"
        if stable_seed(salt, "split", row) % 1_000_000 < heldout_fraction * 1_000_000
        else "train"
    )


def read_user_rows(path: str | Path, fields: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """("path:line", values) for each row of a user-supplied .jsonl/.json or .tsv file.

    JSON lines must hold every field. TSV columns are taken in ``fields`` order, or by name
    when the first line is a header naming them all. Blank lines are skipped; a row missing
    a field is an error naming ``path:line``.
    """
    path = Path(path)
    rows: list[tuple[str, tuple[str, ...]]] = []
    with path.open(encoding="utf-8") as handle:
        if path.suffix in (".jsonl", ".json"):
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                missing = [k for k in fields if k not in record]
                if missing:
                    raise ValueError(f"{path}:{number}: missing keys {missing}")
                rows.append((f"{path}:{number}", tuple(str(record[k]) for k in fields)))
            return rows
        order = tuple(range(len(fields)))
        for number, cells in enumerate(
            csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), 1
        ):
            if not cells or not any(c.strip() for c in cells):
                continue
            names = [c.strip().lower() for c in cells]
            if number == 1 and set(fields) <= set(names):
                order = tuple(names.index(k) for k in fields)
                continue
            if len(cells) <= max(order):
                raise ValueError(f"{path}:{number}: expected {', '.join(fields)} columns")
            rows.append((f"{path}:{number}", tuple(cells[i] for i in order)))
    return rows


def assign_rows(
    rows: Sequence[int], document_ids: Sequence[str], salt: str
) -> dict[str, list[int]]:
    """Row indices per document: each row goes to exactly one of the distinct documents."""
    ids = sorted(set(document_ids))
    out: dict[str, list[int]] = {}
    for row in rows if ids else ():
        out.setdefault(ids[stable_seed(salt, row) % len(ids)], []).append(row)
    return out


class UserRows:
    """User-supplied rows (e.g. Discovery pairs, query/title logs) spread over documents.

    Rows are first split into train/held-out by ``row_split`` (so the held-out split never
    repeats a training row), then each row of the view's split goes to exactly one document
    of that split, so every row is built exactly once whatever the number of workers.
    """

    def __init__(self, num_rows: int, salt: str) -> None:
        self.num_rows = num_rows
        self.salt = salt
        self._cache: tuple[Any, dict[str, list[int]]] | None = None

    def for_document(self, corpus: Any, document_id: str) -> list[int]:
        """Indices of the rows this document yields."""
        if self._cache is None or self._cache[0] is not corpus:
            ids = getattr(corpus, "document_ids", None)
            if ids is None:
                raise ValueError("user data needs a corpus view with document_ids (SentencePool)")
            split = getattr(corpus, "split", "train")
            fraction = getattr(corpus, "heldout_fraction", 0.0)
            rows = [r for r in range(self.num_rows) if row_split(self.salt, r, fraction) == split]
            self._cache = (corpus, assign_rows(rows, ids, self.salt))
        return self._cache[1].get(document_id, [])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None}


# ---------------------------------------------------------------- collation (train time)


def labelled_positions(labels: Tensor) -> Tensor:
    """Flat positions into (B*T) where the (B, T) ``labels`` are not IGNORE_INDEX (from a
    host tensor, no device read; from a device tensor, ``nonzero`` synchronises)."""
    return (labels.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(1)


def declared_positions(task: Any, batch: Mapping[str, Tensor]) -> Tensor | None:
    """``task.read_positions(batch)``, or None for a task that does not declare them (the
    optional part of ``PretrainTask``)."""
    read = getattr(task, "read_positions", None)
    return None if read is None else read(batch)


def first_positions(batch: Mapping[str, Tensor]) -> Tensor:
    """Flat positions of each sequence's first token ([CLS], the pooler's input)."""
    size, length = batch["input_ids"].shape
    return torch.arange(size) * length


def pad_column(rows: Sequence[Sequence[int]], pad_value: int) -> Tensor:
    """Right-pad a list of int lists into a (B, T) long tensor."""
    tensors = [torch.as_tensor(r, dtype=torch.long) for r in rows]
    return nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=pad_value)


def collate_inputs(examples: Mapping[str, Sequence[Any]], pad_token_id: int) -> dict[str, Tensor]:
    """Pad the shared columns; ``attention_mask`` marks real tokens."""
    input_ids = pad_column(examples["input_ids"], pad_token_id)
    lengths = torch.tensor([len(r) for r in examples["input_ids"]])
    attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
    return {
        "input_ids": input_ids,
        "token_type_ids": pad_column(examples["token_type_ids"], 0),
        "attention_mask": attention_mask,
        "word_starts": pad_column(examples["word_starts"], 0),
    }


def classification_loss(logits: Tensor, labels: Tensor) -> TaskLoss:
    """Summed cross-entropy over labels != IGNORE_INDEX, with correct/count statistics."""
    valid = labels != IGNORE_INDEX
    loss_sum = nn.functional.cross_entropy(
        logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    correct = count_correct(logits, labels)
    count = valid.sum()
    return TaskLoss(
        loss_sum, count, {"loss_sum": loss_sum.detach(), "correct": correct, "count": count}
    )


def count_correct(logits: Tensor, targets: Tensor) -> Tensor:
    """Rows (targets != IGNORE_INDEX) whose target scores the row's maximum: the top-1 hits,
    as ``argmax(-1) == targets`` counts them except that a target tied with another class at
    the maximum counts as a hit. One max-reduction and a gather: over a vocabulary, ~9x
    cheaper than ``argmax`` on a CPU (2.4 vs 0.28 ms for 240 x 8,000 logits)."""
    scores = logits.detach()
    valid = targets != IGNORE_INDEX
    target_scores = scores.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return ((target_scores >= scores.amax(-1)) & valid).sum()


def accuracy_metrics(stats: Mapping[str, float]) -> dict[str, float]:
    """accuracy and mean loss from summed statistics."""
    count = max(float(stats.get("count", 0)), 1.0)
    return {
        "accuracy": float(stats.get("correct", 0)) / count,
        "loss": float(stats.get("loss_sum", 0)) / count,
    }


class SentenceClassificationHead(nn.Module):
    """Dropout + linear on the pooled [CLS] output: logits (B, num_labels)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, pooled_output: Tensor) -> Tensor:  # (B, H) -> (B, L)
        """Logits for each sequence."""
        return self.classifier(self.dropout(pooled_output))


class TokenClassificationHead(nn.Module):
    """Dropout + linear on gathered token states: (N, H) -> (N, num_labels)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, token_states: Tensor) -> Tensor:
        """Logits for each selected token."""
        return self.classifier(self.dropout(token_states))


class SentenceClassification:
    """The shared half of sentence-level tasks with one integer label per example, predicted
    from the pooled [CLS] output. A task sets ``label_column``, ``num_labels`` and
    ``label_names`` and writes its own ``build_examples``."""

    label_column: ClassVar[str]
    masks_inputs: ClassVar[bool] = False
    label_names: Sequence[str] = ()
    num_labels: int
    tokenizer: Any

    def example_columns(self) -> dict[str, ColumnKind]:
        """One integer label per example."""
        return {self.label_column: "int"}

    def collate(
        self, examples: Mapping[str, Sequence[Any]], generator: torch.Generator
    ) -> dict[str, Tensor]:
        """Padded inputs and their labels (no randomness)."""
        batch = collate_inputs(examples, self.tokenizer.pad_token_id)
        batch[self.label_column] = torch.as_tensor(examples[self.label_column], dtype=torch.long)
        return batch

    def build_head(self, config: Any) -> nn.Module:
        """A classifier on the pooled output."""
        return SentenceClassificationHead(
            config.hidden_size, self.num_labels, config.hidden_dropout_prob
        )

    def loss(self, head: nn.Module, encoded: Encoded, batch: Mapping[str, Tensor]) -> TaskLoss:
        """Cross-entropy on the label."""
        return classification_loss(head(encoded.pooled_output), batch[self.label_column])

    def read_positions(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The [CLS] rows: the pooled output is all the loss reads."""
        return first_positions(batch)

    def metrics(self, stats: Mapping[str, float]) -> dict[str, float]:
        """Accuracy and mean loss."""
        return accuracy_metrics(stats)

    def label_counts(self, columns: Mapping[str, Sequence[Any]]) -> dict[str, int]:
        """Examples per label name."""
        counts = Counter(int(label) for label in columns[self.label_column])
        return {name: counts.get(i, 0) for i, name in enumerate(self.label_names)}


class AttachingCollate:
    """Token-level tasks: a batch of their own examples is the shared columns padded, then
    the task's own ``attach`` (the same code that labels other tasks' batches)."""

    tokenizer: Any

    def collate(
        self, examples: Mapping[str, Sequence[Any]], generator: torch.Generator
    ) -> dict[str, Tensor]:
        """Pad the shared columns, then attach this task's labels (and masking)."""
        batch = collate_inputs(examples, self.tokenizer.pad_token_id)
        self.attach(batch, examples, generator)
        return batch


def binary_token_loss(head: nn.Module, encoded: Encoded, labels: Tensor) -> TaskLoss:
    """Cross-entropy over labelled positions, with accuracy and class-1 F1 statistics."""
    positions = labels != IGNORE_INDEX  # (B, T)
    logits = head(encoded.sequence_output[positions])  # (N, 2)
    targets = labels[positions]  # (N,)
    loss = classification_loss(logits, targets)
    predicted = logits.argmax(-1)
    stats = {
        **loss.stats,
        "true_positive": ((predicted == 1) & (targets == 1)).sum(),
        "predicted_positive": (predicted == 1).sum(),
        "actual_positive": (targets == 1).sum(),
    }
    return TaskLoss(loss.loss_sum, loss.sample_size, stats)


def binary_token_metrics(stats: Mapping[str, float]) -> dict[str, float]:
    """Accuracy, mean loss, and precision/recall/F1 of class 1, from summed statistics."""
    true_positive = float(stats.get("true_positive", 0))
    precision = true_positive / max(float(stats.get("predicted_positive", 0)), 1.0)
    recall = true_positive / max(float(stats.get("actual_positive", 0)), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    positive_rate = float(stats.get("actual_positive", 0)) / max(float(stats.get("count", 0)), 1.0)
    return {
        **accuracy_metrics(stats),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "positive_rate": positive_rate,
    }


def padded_labels(rows: Sequence[Sequence[int]], length: int) -> Tensor:
    """Label rows right-padded with IGNORE_INDEX to exactly ``length`` columns: (B, length)."""
    tensor = pad_column(rows, IGNORE_INDEX)
    padding = max(length - tensor.shape[1], 0)
    return nn.functional.pad(tensor, (0, padding), value=IGNORE_INDEX)[:, :length]


def count_binary_labels(rows: Sequence[Sequence[int]], names: tuple[str, str]) -> dict[str, int]:
    """How many tokens carry label 0 and label 1, under the given ``names``."""
    flat = [label for row in rows for label in row]
    return {names[0]: flat.count(0), names[1]: flat.count(1)}


class BinaryTokenClassification(AttachingCollate):
    """The shared half of token tasks whose prepare-time column ``<name>_labels`` holds a 0/1
    label per token (IGNORE_INDEX where unlabelled). A task sets ``label_names`` (the names
    of label 0 and 1) and writes its own ``build_examples``."""

    name: ClassVar[str]
    label_names: ClassVar[tuple[str, str]]
    masks_inputs: ClassVar[bool] = False
    num_labels = 2

    @property
    def labels_key(self) -> str:
        """The column (and batch key) of this task's labels."""
        return f"{self.name}_labels"

    def attach(
        self,
        batch: dict[str, Tensor],
        examples: Mapping[str, Sequence[Any]],
        generator: torch.Generator,
    ) -> bool:
        """Add the labels column to ``batch``; False when the examples lack it."""
        if self.labels_key not in examples:
            return False
        batch[self.labels_key] = padded_labels(
            examples[self.labels_key], batch["input_ids"].shape[1]
        )
        return True

    def build_head(self, config: Any) -> nn.Module:
        """A 2-way token classifier."""
        return TokenClassificationHead(
            config.hidden_size, self.num_labels, config.hidden_dropout_prob
        )

    def loss(self, head: nn.Module, encoded: Encoded, batch: Mapping[str, Tensor]) -> TaskLoss:
        """Cross-entropy over labelled tokens."""
        return binary_token_loss(head, encoded, batch[self.labels_key])

    def read_positions(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The labelled tokens."""
        return labelled_positions(batch[self.labels_key])

    def metrics(self, stats: Mapping[str, float]) -> dict[str, float]:
        """Accuracy, and precision/recall/F1 of label 1."""
        return binary_token_metrics(stats)

    def label_counts(self, columns: Mapping[str, Sequence[Any]]) -> dict[str, int]:
        """Labelled tokens per class."""
        return count_binary_labels(columns[self.labels_key], self.label_names)


@runtime_checkable
class PretrainTask(Protocol):
    """What a pre-training objective provides. ``name`` = file stem = config string.

    Construction: ``TaskClass(settings, tokenizer, max_seq_length)``, where ``settings`` is
    an instance of the class's ``Settings`` (a frozen dataclass of the task's options, built
    from the config by ``settings_from_options``; subclass ``schedules.options.Settings`` and
    declare probabilities with ``schedules.options.probability`` to get range checks),
    ``tokenizer`` a fast Hugging Face tokenizer and ``max_seq_length`` the longest example,
    special tokens included. The constructor may raise ValueError for unusable settings.

    Class flags, checked when the task is registered (``pretrain_tasks.check_task_class``):
    ``family`` one of FAMILIES, ``level`` one of LEVELS (a "token" task also implements
    ``attach``, see ``TokenLevelTask``), and ``masks_inputs``: True when collating or
    attaching replaces input tokens, in which case the task must follow the protocol of
    ``pretrain_tasks.masking`` (skip and record ``MASKED_POSITIONS``).

    Optional: ``read_positions(batch) -> Tensor | None``, the flat positions into (B*T) of
    the sequence output that ``loss`` reads for ``batch`` (None: it may read any). When
    every task of a batch declares them, training computes the encoder's top layer at
    those rows only (``ernie_cpt.model.sparse_top``); a task without it gets every row.
    """

    name: ClassVar[str]
    family: ClassVar[Family]
    level: ClassVar[Level]
    masks_inputs: ClassVar[bool]
    Settings: ClassVar[type]
    settings: Any
    num_labels: int

    def build_examples(
        self, document: Document, corpus: CorpusView, rng: random.Random
    ) -> list[dict[str, Any]]:
        """Examples (column -> value) from one document; raise SkipDocument to skip it.

        Every example holds the shared columns (``input_ids``, ``token_type_ids``,
        ``word_starts``) and exactly the columns of ``example_columns``.
        """
        ...

    def example_columns(self) -> dict[str, ColumnKind]:
        """Task-specific columns (prefixed with the task name) and their kind."""
        ...

    def collate(
        self, examples: Mapping[str, Sequence[Any]], generator: torch.Generator
    ) -> dict[str, Tensor]:
        """A padded batch from columnar examples; per-epoch randomness from ``generator``."""
        ...

    def build_head(self, config: Any) -> nn.Module:
        """The task's head for an encoder of this (transformers) config."""
        ...

    def loss(self, head: nn.Module, encoded: Encoded, batch: Mapping[str, Tensor]) -> TaskLoss:
        """Summed loss, sample count and summable stats for one batch."""
        ...

    def metrics(self, stats: Mapping[str, float]) -> dict[str, float]:
        """Metrics from statistics summed over batches and ranks."""
        ...

    def label_counts(self, columns: Mapping[str, Sequence[Any]]) -> dict[str, int]:
        """Label distribution of prepared examples, for the data report."""
        ...


class TokenLevelTask(PretrainTask, Protocol):
    """Token-level tasks can also label another task's batch (one forward, several losses)."""

    def attach(
        self,
        batch: dict[str, Tensor],
        examples: Mapping[str, Sequence[Any]],
        generator: torch.Generator,
    ) -> bool:
        """Add this task's inputs/labels to ``batch`` in place; False if it cannot."""
        ...
