"""Downstream evaluation: fine-tune an exported encoder on local labelled data, k seeds.

The ERNIE protocol (Sun et al. 2020, following BERT): fine-tune the pre-trained encoder with
a fresh linear head on the pooled [CLS] output, repeat with several seeds, report the
median dev score. This is a probe of what pre-training produced, so the loop is plain
PyTorch on one process (no DeepSpeed): AdamW, linear warm-up and decay, dropout on.

Data (``read_rows``): a GLUE-style TSV with a header row, or JSON lines. Text fields are
found by name (``text``/``text_a``/``sentence``/``sentence1``/``question``/``#1 String``
and ``text_b``/``sentence2``/``#2 String`` for the second segment), the label in
``label``/``gold_label``/``score``/``Quality``; ``text_fields``/``label_field`` name them
explicitly. Task types: ``single`` and ``pair`` classification (accuracy, macro F1; score =
accuracy) and ``regression`` on one or two segments (Pearson, Spearman; score = Pearson);
``auto`` picks regression for non-integer numeric labels and pair when a second text field
exists. Without a dev file, a fixed ``dev_fraction`` of the data (shuffled with
``split_seed``, the same for every model and seed) is held out. Each seed's score is the
dev score after the last epoch (no selection on dev). Inputs carry task id ``task_id``
(default 0) in the task embedding.
"""

from __future__ import annotations

import csv
import json
import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ernie_cpt.errors import InputError, MissingInputError

TEXT_A_FIELDS = ("text", "text_a", "sentence", "sentence1", "question", "#1 String")
TEXT_B_FIELDS = ("text_b", "sentence2", "#2 String")
LABEL_FIELDS = ("label", "gold_label", "score", "Quality")
TASK_TYPES = ("auto", "single", "pair", "regression", "ranking")
# ranking data (MT-DNN's relevance ranking): rows sharing a query form one candidate list
RANK_QUERY_FIELD = "query"
RANK_GROUP_FIELDS = ("group", "qid", "query_id")
RANK_PASSAGE_FIELDS = ("passage", "document", "text_b", "sentence2", "sentence", "text", "answer")
RELEVANT_LABELS = ("1", "true", "yes", "relevant", "entailment")


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings (BERT/ERNIE defaults; tiny models want a larger ``lr``)."""

    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 16
    max_length: int = 128
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    dropout: float = 0.1
    task_id: int = 0
    dev_fraction: float = 0.2
    split_seed: int = 0
    # torch CPU threads (None = torch's default); 1 is much faster for tiny models on busy CPUs
    threads: int | None = None


@dataclass(frozen=True)
class LabelledData:
    """Examples of one downstream task: one or two text segments and a label each."""

    texts_a: list[str]
    texts_b: list[str] | None
    labels: list[float] | list[int]
    task_type: str
    label_names: list[str] | None = None
    # ranking only: the candidate list (query) of each row
    groups: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts_a)

    def subset(self, indices: Sequence[int]) -> LabelledData:
        """The examples at ``indices``, in that order."""
        pick = lambda xs: [xs[i] for i in indices]  # noqa: E731
        return LabelledData(
            pick(self.texts_a),
            pick(self.texts_b) if self.texts_b is not None else None,
            pick(self.labels),
            self.task_type,
            self.label_names,
            pick(self.groups) if self.groups is not None else None,
        )


# ---------------------------------------------------------------------------- reading data
def read_utf8(path: Path) -> str:
    """A labelled file's text; a file that is not UTF-8 is a one-line error naming it."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(
            f"{path} is not UTF-8 text (byte {error.start}: {error.reason}); "
            "convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """Rows of a TSV (header row) or JSONL file as dicts of strings."""
    path = Path(path)
    text = read_utf8(path)
    if path.suffix in (".jsonl", ".json") or text.lstrip().startswith("{"):
        return [
            {k: "" if v is None else str(v) for k, v in json.loads(line).items()}
            for line in text.splitlines()
            if line.strip()
        ]
    reader = csv.DictReader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    return [dict(row) for row in reader]


def find_fields(
    columns: Sequence[str],
    text_fields: Sequence[str] | None = None,
    label_field: str | None = None,
) -> tuple[str, str | None, str]:
    """(first text field, second text field or None, label field) of a header."""
    if text_fields:
        missing = [f for f in text_fields if f not in columns]
        if missing or len(text_fields) > 2:
            raise InputError(f"text fields {list(text_fields)} not usable with columns {columns}")
        first, second = text_fields[0], (text_fields[1] if len(text_fields) > 1 else None)
    else:
        found = [f for f in TEXT_A_FIELDS if f in columns]
        if not found:
            raise InputError(f"no text field among {columns}; expected one of {TEXT_A_FIELDS}")
        first = found[0]
        second = next((f for f in TEXT_B_FIELDS if f in columns and f != first), None)
    label = label_field or next((f for f in LABEL_FIELDS if f in columns), None)
    if label is None or label not in columns:
        raise InputError(f"no label field among {columns}; expected one of {LABEL_FIELDS}")
    return first, second, label


def infer_task_type(labels: Sequence[str], has_pair: bool) -> str:
    """``regression`` for numeric, non-integer labels; otherwise ``pair`` or ``single``."""
    try:
        values = [float(label) for label in labels]
    except ValueError:
        values = None
    if values is not None and any(not v.is_integer() for v in values):
        return "regression"
    return "pair" if has_pair else "single"


def load_labelled(
    path: str | Path,
    task_type: str = "auto",
    text_fields: Sequence[str] | None = None,
    label_field: str | None = None,
    label_names: Sequence[str] | None = None,
) -> LabelledData:
    """Read a labelled file into ``LabelledData`` (``label_names`` fixes the class order)."""
    if task_type not in TASK_TYPES:
        raise InputError(f"task type must be one of {TASK_TYPES}, got {task_type!r}")
    rows = [r for r in read_rows(path) if r]
    if not rows:
        raise InputError(f"{path}: no examples")
    columns = list(rows[0])
    ranked = RANK_QUERY_FIELD in columns or any(f in columns for f in RANK_GROUP_FIELDS)
    if task_type == "ranking" or (task_type == "auto" and ranked and not text_fields):
        return load_ranking(path, rows, label_field)
    first, second, label = find_fields(list(rows[0]), text_fields, label_field)
    rows = [r for r in rows if (r.get(label) or "").strip() != ""]
    raw_labels = [r[label].strip() for r in rows]
    if task_type == "auto":
        task_type = infer_task_type(raw_labels, second is not None)
    if task_type == "pair" and second is None:
        raise InputError(f"{path}: task type 'pair' needs a second text field {TEXT_B_FIELDS}")
    texts_b = [r.get(second) or "" for r in rows] if second is not None else None
    if task_type == "single":
        texts_b = None
    texts_a = [r.get(first) or "" for r in rows]
    if task_type == "regression":
        return LabelledData(texts_a, texts_b, [float(x) for x in raw_labels], task_type)
    names = list(label_names) if label_names else sorted(set(raw_labels), key=_label_order)
    unknown = sorted(set(raw_labels) - set(names))
    if unknown:
        raise InputError(f"{path}: labels {unknown} not among the training labels {names}")
    index = {name: i for i, name in enumerate(names)}
    return LabelledData(texts_a, texts_b, [index[x] for x in raw_labels], task_type, names)


def load_ranking(
    path: str | Path, rows: Sequence[Mapping[str, str]], label_field: str | None = None
) -> LabelledData:
    """Ranking rows: (query, passage, relevance); a ``group``/``qid`` column or else the query
    text names each row's candidate list. Relevance: a number > 0 or one of ``RELEVANT_LABELS``."""
    columns = list(rows[0])
    group = next((f for f in RANK_GROUP_FIELDS if f in columns), RANK_QUERY_FIELD)
    if RANK_QUERY_FIELD in columns:
        first = RANK_QUERY_FIELD
        second = next((f for f in RANK_PASSAGE_FIELDS if f in columns and f != first), None)
        if second is None:
            raise InputError(f"{path}: ranking rows need a passage field {RANK_PASSAGE_FIELDS}")
        label = label_field or next((f for f in LABEL_FIELDS if f in columns), "")
    else:
        first, second, label = find_fields(columns, None, label_field)
    if group not in columns or label not in columns:
        raise InputError(f"{path}: ranking rows need a {group!r} and a label field")
    rows = [r for r in rows if (r.get(label) or "").strip() != ""]
    return LabelledData(
        [r.get(first) or "" for r in rows],
        [r.get(second) or "" for r in rows] if second else None,
        [int(_relevant(r[label])) for r in rows],
        "ranking",
        ["0", "1"],
        [r[group] for r in rows],
    )


def _relevant(label: str) -> bool:
    try:
        return float(label) > 0
    except ValueError:
        return label.strip().lower() in RELEVANT_LABELS


def _label_order(label: str) -> tuple[int, float, str]:
    """Numeric labels in numeric order, then the rest alphabetically."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def split_dev(data: LabelledData, fraction: float, seed: int) -> tuple[LabelledData, LabelledData]:
    """(train, dev): a fixed shuffled ``fraction`` held out as dev."""
    if not 0.0 < fraction < 1.0:
        raise InputError(f"dev fraction must be in (0, 1), got {fraction}")
    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    cut = max(1, round(len(order) * fraction))
    if cut >= len(order):
        raise InputError(f"{len(order)} examples are too few to hold out a dev split")
    return data.subset(sorted(order[cut:])), data.subset(sorted(order[:cut]))


# ---------------------------------------------------------------------------------- metrics
def classification_metrics(predictions: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    """Accuracy and macro F1 (over the classes present in labels or predictions)."""
    accuracy = sum(p == y for p, y in zip(predictions, labels, strict=True)) / len(labels)
    f1s = []
    for c in sorted(set(labels) | set(predictions)):
        tp = sum(p == c and y == c for p, y in zip(predictions, labels, strict=True))
        fp = sum(p == c and y != c for p, y in zip(predictions, labels, strict=True))
        fn = sum(p != c and y == c for p, y in zip(predictions, labels, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": accuracy, "macro_f1": statistics.fmean(f1s), "score": accuracy}


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson correlation; NaN when either side is constant."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def ranks(values: Sequence[float]) -> list[float]:
    """Ranks (1-based), ties given their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def regression_metrics(predictions: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlations; score = Pearson."""
    r = pearson(predictions, labels)
    return {"pearson": r, "spearman": pearson(ranks(predictions), ranks(labels)), "score": r}


# ------------------------------------------------------------------------------- fine-tuning
def encode(tokenizer: Any, data: LabelledData, max_length: int) -> dict[str, Any]:
    """Tokenize every example once: padded (N, T) tensors plus labels (N,)."""
    import torch

    encoded = tokenizer(
        data.texts_a,
        data.texts_b,
        truncation=True,
        max_length=max_length,
        padding=True,
        return_token_type_ids=True,
        return_tensors="pt",
    )
    dtype = torch.float32 if data.task_type == "regression" else torch.long
    return {
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "token_type_ids": encoded["token_type_ids"],
        "labels": torch.tensor(data.labels, dtype=dtype),
    }


def build_classifier(model_dir: Path, outputs: int, dropout: float) -> Any:
    """The exported encoder plus a fresh dropout + linear head on the pooled output."""
    from torch import nn
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
            self.dropout = nn.Dropout(dropout)
            self.head = nn.Linear(self.encoder.config.hidden_size, outputs)

        def forward(self, batch: Mapping[str, Any]) -> Any:
            out = self.encoder(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"],
                task_type_ids=batch["task_type_ids"],
            )
            return self.head(self.dropout(out.pooler_output))  # (B, outputs)

    return Classifier()


def _with_task_ids(batch: Mapping[str, Any], task_id: int) -> dict[str, Any]:
    import torch

    return {**batch, "task_type_ids": torch.full_like(batch["input_ids"], task_id)}


def _loss(logits: Any, labels: Any, regression: bool) -> Any:
    import torch.nn.functional as F

    if regression:
        return F.mse_loss(logits.squeeze(-1), labels)
    return F.cross_entropy(logits, labels)


def _batches(tensors: Mapping[str, Any], size: int, order: Sequence[int]) -> list[dict[str, Any]]:
    return [
        {k: v[list(order[i : i + size])] for k, v in tensors.items()}
        for i in range(0, len(order), size)
    ]


def finetune_once(
    model_dir: str | Path,
    train: LabelledData,
    dev: LabelledData,
    config: FinetuneConfig,
    seed: int,
    progress: bool = False,
) -> dict[str, float]:
    """Fine-tune with one seed; returns the dev metrics after the last epoch (``progress``:
    a bar with ETA on stderr)."""
    import sys

    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(seed)
    regression = train.task_type == "regression"
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    outputs = 1 if regression else len(train.label_names or [])
    model = build_classifier(Path(model_dir), outputs, config.dropout)
    length = min(config.max_length, model.encoder.config.max_position_embeddings)
    train_t, dev_t = encode(tokenizer, train, length), encode(tokenizer, dev, length)
    steps = config.epochs * math.ceil(len(train) / config.batch_size)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    warmup = int(steps * config.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / max(warmup, 1)
            if s < warmup
            else max(0.0, (steps - s) / max(steps - warmup, 1))
        ),
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(total=steps, desc=f"seed {seed}", file=sys.stderr, disable=not progress, leave=False)
    for _ in range(config.epochs):
        order = torch.randperm(len(train), generator=generator).tolist()
        for batch in _batches(train_t, config.batch_size, order):
            batch = _with_task_ids(batch, config.task_id)
            loss = _loss(model(batch), batch["labels"], regression)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            bar.update()
    bar.close()
    return predict_metrics(model, dev_t, config, regression)


def predict_metrics(
    model: Any, tensors: Mapping[str, Any], config: FinetuneConfig, regression: bool
) -> dict[str, float]:
    """Dev metrics of a fine-tuned model (eval mode, no gradient)."""
    import torch

    model.train(False)  # evaluation mode (no dropout)
    predictions: list[Any] = []
    with torch.no_grad():
        for batch in _batches(tensors, 64, range(len(tensors["labels"]))):
            logits = model(_with_task_ids(batch, config.task_id))
            predictions += logits.squeeze(-1).tolist() if regression else logits.argmax(-1).tolist()
    labels = tensors["labels"].tolist()
    if regression:
        return regression_metrics(predictions, labels)
    return classification_metrics(predictions, labels)


def evaluate_model(
    model_dir: str | Path,
    data_path: str | Path,
    *,
    dev_path: str | Path | None = None,
    task_type: str = "auto",
    seeds: int = 5,
    config: FinetuneConfig | None = None,
    text_fields: Sequence[str] | None = None,
    label_field: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``seeds`` times; the median dev score and every seed's metrics."""
    config = config or FinetuneConfig()
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise MissingInputError(f"{model_dir}: not an exported model (no config.json)")
    data = load_labelled(data_path, task_type, text_fields, label_field)
    if data.task_type == "ranking":
        raise InputError(f"{data_path}: ranking data (a query column): use ernie-cpt finetune")
    if dev_path is not None:
        dev = load_labelled(dev_path, data.task_type, text_fields, label_field, data.label_names)
        train = data
    else:
        train, dev = split_dev(data, config.dev_fraction, config.split_seed)
    per_seed = [
        finetune_once(model_dir, train, dev, config, seed, progress) for seed in range(seeds)
    ]
    scores = [m["score"] for m in per_seed]
    defined = [s for s in scores if not math.isnan(s)]
    return {
        "model": str(model_dir),
        "data": str(data_path),
        "dev": str(dev_path) if dev_path is not None else f"{config.dev_fraction:g} held out",
        "task_type": data.task_type,
        "metric": "pearson" if data.task_type == "regression" else "accuracy",
        "labels": data.label_names,
        "train_size": len(train),
        "dev_size": len(dev),
        "median": statistics.median(defined) if defined else math.nan,
        "scores": scores,
        "per_seed": per_seed,
        "config": asdict(config),
    }
