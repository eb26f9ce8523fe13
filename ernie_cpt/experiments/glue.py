"""Downstream data sets: GLUE folders with their official metrics, labelled files, hub names.

``resolve_data(spec)`` turns one ``--data [NAME=]WHERE`` into downstream tasks:

- a GLUE task folder (``SST-2/``, ``CoLA/``, ``MRPC/``, ``STS-B/``, ``QQP/``, ``MNLI/``, ``QNLI/``,
  ``RTE/``, ``WNLI/``, as distributed by the GLUE benchmark) read with the column layouts of
  the reference processors (``transformers``' ``glue.py``): train on ``train.tsv``, evaluate
  on ``dev.tsv`` (MNLI: ``dev_matched.tsv`` and ``dev_mismatched.tsv``). CoLA's files have no
  header; QQP rows with missing fields are skipped, as there.
- a GLUE root: every task folder present in it.
- a folder with ``train.*`` and ``dev.*`` (TSV with header or JSONL): one task.
- a labelled file (what ``ernie-cpt evaluate`` reads): a fixed fraction held out as dev.
- a ``datasets`` hub name (``glue/sst2``): needs a network or a local datasets cache.

Official metrics (GLUE, Wang et al. 2019): Matthews correlation for CoLA, F1 of the positive
class and accuracy for MRPC and QQP, Pearson and Spearman for STS-B, matched and mismatched
accuracy for MNLI, accuracy otherwise. A task's ``score`` is the mean of its official metrics
(as the GLUE leaderboard averages them); plain files keep ``evaluate``'s scores (accuracy,
Pearson) and ranking data scores precision at 1.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ernie_cpt.errors import InputError, MissingInputError
from ernie_cpt.experiments.finetune import (
    LabelledData,
    classification_metrics,
    load_labelled,
    read_utf8,
    regression_metrics,
    split_dev,
)


@dataclass(frozen=True)
class GlueLayout:
    """Where a GLUE task's columns are (0-based), its labels, dev files and metric."""

    text_a: int
    text_b: int | None
    label: int  # -1: the last column
    header: bool
    label_names: tuple[str, ...] | None  # None: regression
    metric: str
    devs: dict[str, str] = field(default_factory=lambda: {"dev": "dev.tsv"})
    hub: tuple[str, str, str | None, str] = ("", "", None, "label")  # config, text_a, text_b


BINARY = ("0", "1")
ENTAILMENT = ("entailment", "not_entailment")
GLUE_LAYOUTS: dict[str, GlueLayout] = {
    "CoLA": GlueLayout(3, None, 1, False, BINARY, "mcc", hub=("cola", "sentence", None, "label")),
    "SST-2": GlueLayout(0, None, 1, True, BINARY, "accuracy", hub=("sst2", "sentence", None, "")),
    "MRPC": GlueLayout(
        3, 4, 0, True, BINARY, "f1_accuracy", hub=("mrpc", "sentence1", "sentence2", "")
    ),
    "STS-B": GlueLayout(
        7, 8, -1, True, None, "pearson_spearman", hub=("stsb", "sentence1", "sentence2", "")
    ),
    "QQP": GlueLayout(
        3, 4, 5, True, BINARY, "f1_accuracy", hub=("qqp", "question1", "question2", "")
    ),
    "MNLI": GlueLayout(
        8,
        9,
        -1,
        True,
        ("contradiction", "entailment", "neutral"),
        "accuracy",
        {"matched": "dev_matched.tsv", "mismatched": "dev_mismatched.tsv"},
        hub=("mnli", "premise", "hypothesis", ""),
    ),
    "QNLI": GlueLayout(
        1, 2, -1, True, ENTAILMENT, "accuracy", hub=("qnli", "question", "sentence", "")
    ),
    "RTE": GlueLayout(
        1, 2, -1, True, ENTAILMENT, "accuracy", hub=("rte", "sentence1", "sentence2", "")
    ),
    "WNLI": GlueLayout(
        1, 2, -1, True, BINARY, "accuracy", hub=("wnli", "sentence1", "sentence2", "")
    ),
}


@dataclass(frozen=True)
class DownstreamTask:
    """One downstream task: training examples, named dev splits and how to score them."""

    name: str
    train: LabelledData
    devs: dict[str, LabelledData]
    metric: str  # a key of METRICS
    source: str = ""

    @property
    def outputs(self) -> int:
        """Width of the task's head: 1 for regression and ranking scores, else the classes."""
        if self.train.task_type in ("regression", "ranking"):
            return 1
        return len(self.train.label_names or [])


# ---------------------------------------------------------------------------------- metrics
def matthews_corrcoef(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Binary Matthews correlation (CoLA's metric); 0 when a margin is empty, as sklearn."""
    pairs = list(zip(predictions, labels, strict=True))
    tp = sum(p == 1 and y == 1 for p, y in pairs)
    tn = sum(p == 0 and y == 0 for p, y in pairs)
    fp = sum(p == 1 and y == 0 for p, y in pairs)
    fn = sum(p == 0 and y == 1 for p, y in pairs)
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denominator if denominator else 0.0


def binary_f1(predictions: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class (MRPC's and QQP's metric)."""
    pairs = list(zip(predictions, labels, strict=True))
    tp = sum(p == positive and y == positive for p, y in pairs)
    fp = sum(p == positive and y != positive for p, y in pairs)
    fn = sum(p != positive and y == positive for p, y in pairs)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def ranking_metrics(
    scores: Sequence[float], labels: Sequence[int], groups: Sequence[str]
) -> dict[str, float]:
    """Per candidate list (query): precision at 1 and reciprocal rank of the first relevant
    candidate, averaged over lists with a relevant candidate; score = precision at 1."""
    lists: dict[str, list[tuple[float, int]]] = {}
    for s, y, g in zip(scores, labels, groups, strict=True):
        lists.setdefault(g, []).append((s, y))
    p_at_1, reciprocal = [], []
    for candidates in lists.values():
        if not any(y for _, y in candidates):
            continue
        ranked = [y for _, y in sorted(candidates, key=lambda c: -c[0])]  # stable on ties
        p_at_1.append(float(ranked[0]))
        reciprocal.append(1.0 / (ranked.index(1) + 1))
    p1 = statistics.fmean(p_at_1) if p_at_1 else math.nan
    mrr = statistics.fmean(reciprocal) if reciprocal else math.nan
    return {"p_at_1": p1, "mrr": mrr, "score": p1}


def _classification(predictions: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    return classification_metrics([int(p) for p in predictions], [int(y) for y in labels])


def _mcc(predictions: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    mcc = matthews_corrcoef([int(p) for p in predictions], [int(y) for y in labels])
    accuracy = _classification(predictions, labels)["accuracy"]
    return {"mcc": mcc, "accuracy": accuracy, "score": mcc}


def _f1_accuracy(predictions: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    f1 = binary_f1([int(p) for p in predictions], [int(y) for y in labels])
    accuracy = _classification(predictions, labels)["accuracy"]
    return {"f1": f1, "accuracy": accuracy, "score": (f1 + accuracy) / 2}


def _pearson_spearman(predictions: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    m = regression_metrics(predictions, labels)
    return {**m, "score": (m["pearson"] + m["spearman"]) / 2}


# name: (predictions (class ids or scores), labels) -> metrics with a "score"
METRICS = {
    "accuracy": _classification,
    "pearson": regression_metrics,
    "mcc": _mcc,
    "f1_accuracy": _f1_accuracy,
    "pearson_spearman": _pearson_spearman,
}


def split_metrics(
    task: DownstreamTask, predictions: Sequence[float], split: str
) -> dict[str, float]:
    """Metrics of one dev split (predictions: class ids, or scores for regression/ranking)."""
    dev = task.devs[split]
    if task.metric == "ranking":
        return ranking_metrics(predictions, [int(y) for y in dev.labels], dev.groups or [])
    return METRICS[task.metric](predictions, dev.labels)


def combine_splits(per_split: dict[str, dict[str, float]]) -> dict[str, float]:
    """One split: its metrics. Several (MNLI): ``<split>_<metric>``, score = mean of scores."""
    if len(per_split) == 1:
        return next(iter(per_split.values()))
    out = {
        f"{split}_{k}": v for split, m in per_split.items() for k, v in m.items() if k != "score"
    }
    out["score"] = statistics.fmean(m["score"] for m in per_split.values())
    return out


# ----------------------------------------------------------------------------- GLUE folders
def glue_name(name: str) -> str | None:
    """The GLUE task a folder or hub name denotes (``sst2``, ``SST-2``, ``sts_b``), or None."""
    key = name.lower().replace("-", "").replace("_", "")
    return next((k for k in GLUE_LAYOUTS if k.lower().replace("-", "") == key), None)


def read_glue_tsv(path: Path, layout: GlueLayout) -> LabelledData:
    """A GLUE TSV by column position (``csv`` without quoting, as the reference readers)."""
    text = read_utf8(path)
    lines = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    if layout.header:
        lines = lines[1:]
    wanted = max(layout.text_a, layout.text_b or 0, layout.label)
    rows = [line for line in lines if len(line) > wanted and line[layout.label].strip()]
    if not rows:
        raise InputError(f"{path}: no labelled rows in the GLUE layout")
    texts_a = [r[layout.text_a] for r in rows]
    texts_b = [r[layout.text_b] for r in rows] if layout.text_b is not None else None
    raw = [r[layout.label].strip() for r in rows]
    if layout.label_names is None:
        return LabelledData(texts_a, texts_b, [float(x) for x in raw], "regression")
    names = list(layout.label_names)
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise InputError(f"{path}: labels {unknown[:5]} are not {names}")
    kind = "pair" if texts_b is not None else "single"
    return LabelledData(texts_a, texts_b, [names.index(x) for x in raw], kind, names)


def load_glue_folder(folder: Path, task: str, name: str | None = None) -> DownstreamTask:
    """A GLUE task folder: ``train.tsv`` plus its dev file(s)."""
    layout = GLUE_LAYOUTS[task]
    missing = [f for f in ("train.tsv", *layout.devs.values()) if not (folder / f).exists()]
    if missing:
        raise MissingInputError(f"{folder}: GLUE {task} folder lacks {', '.join(missing)}")
    devs = {split: read_glue_tsv(folder / f, layout) for split, f in layout.devs.items()}
    return DownstreamTask(
        name or task, read_glue_tsv(folder / "train.tsv", layout), devs, layout.metric, str(folder)
    )


def load_hub(name: str, label: str | None = None) -> DownstreamTask:
    """A ``datasets`` hub GLUE task (``glue/sst2``): train and validation split(s).
    Needs a network (or the datasets cache); nothing here runs in the tests."""
    from datasets import load_dataset

    benchmark, _, config = name.partition("/")
    task = glue_name(config)
    if benchmark != "glue" or task is None:
        raise InputError(f"{name!r}: hub names are glue/<task>, e.g. glue/sst2")
    layout = GLUE_LAYOUTS[task]
    hub_config, first, second, _ = layout.hub
    splits = {"matched": "validation_matched", "mismatched": "validation_mismatched"}
    dev_splits = splits if task == "MNLI" else {"dev": "validation"}

    def convert(rows: object) -> LabelledData:
        texts_a = list(rows[first])  # type: ignore[index]
        texts_b = list(rows[second]) if second else None  # type: ignore[index]
        labels = list(rows["label"])  # type: ignore[index]
        if layout.label_names is None:
            return LabelledData(texts_a, texts_b, [float(y) for y in labels], "regression")
        names = list(rows.features["label"].names)  # type: ignore[attr-defined]
        return LabelledData(texts_a, texts_b, labels, "pair" if second else "single", names)

    data = load_dataset("glue", hub_config)
    devs = {split: convert(data[hub]) for split, hub in dev_splits.items()}
    return DownstreamTask(label or task, convert(data["train"]), devs, layout.metric, name)


# ------------------------------------------------------------------------------ resolving
def parse_spec(spec: str) -> tuple[str | None, str]:
    """``NAME=WHERE`` -> (NAME, WHERE); ``WHERE`` -> (None, WHERE)."""
    name, sep, where = spec.partition("=")
    if sep and name and "/" not in name and not Path(spec).exists():
        return name, where
    return None, spec


def _split_files(folder: Path) -> tuple[Path, Path] | None:
    found = []
    for stem in ("train", "dev"):
        files = sorted(p for p in folder.glob(f"{stem}.*") if p.suffix in (".tsv", ".jsonl"))
        found.append(files[0] if files else None)
    train, dev = found
    return (train, dev) if train is not None and dev is not None else None


def resolve_data(
    spec: str, task_type: str = "auto", dev_fraction: float = 0.2, split_seed: int = 0
) -> list[DownstreamTask]:
    """The downstream task(s) named by one ``--data`` value (see the module docstring)."""
    name, where = parse_spec(spec)
    path = Path(where)
    if not path.exists():
        if where.startswith("glue/"):
            return [load_hub(where, name)]
        raise MissingInputError(f"{where}: no such file or folder (hub names: glue/<task>)")
    if path.is_dir():
        task = glue_name(name or "") or glue_name(path.name)
        if task is not None:
            return [load_glue_folder(path, task, name or task)]
        pair = _split_files(path)
        if pair is not None:
            return [_file_task(name or path.name, pair[0], pair[1], task_type)]
        children = [(c, glue_name(c.name)) for c in sorted(path.iterdir()) if c.is_dir()]
        tasks = [load_glue_folder(c, t) for c, t in children if t is not None]
        if not tasks:
            raise MissingInputError(f"{path}: neither a GLUE task folder nor a GLUE root")
        return tasks
    data = load_labelled(path, task_type)
    if data.task_type == "ranking":
        train, dev = split_dev_by_group(data, dev_fraction, split_seed)
    else:
        train, dev = split_dev(data, dev_fraction, split_seed)
    return [_task(name or path.stem, train, {"dev": dev}, str(path))]


def split_dev_by_group(
    data: LabelledData, fraction: float, seed: int
) -> tuple[LabelledData, LabelledData]:
    """(train, dev) of ranking data: whole candidate lists held out, never split."""
    groups = sorted(set(data.groups or []))
    held = set(
        split_dev(LabelledData(groups, None, [0] * len(groups), "single"), fraction, seed)[
            1
        ].texts_a
    )
    train = [i for i, g in enumerate(data.groups or []) if g not in held]
    dev = [i for i, g in enumerate(data.groups or []) if g in held]
    return data.subset(train), data.subset(dev)


def _file_task(name: str, train_path: Path, dev_path: Path, task_type: str) -> DownstreamTask:
    train = load_labelled(train_path, task_type)
    dev = load_labelled(dev_path, train.task_type, label_names=train.label_names)
    return _task(name, train, {"dev": dev}, str(train_path.parent))


def _task(
    name: str, train: LabelledData, devs: dict[str, LabelledData], source: str
) -> DownstreamTask:
    metric = {"regression": "pearson", "ranking": "ranking"}.get(train.task_type, "accuracy")
    return DownstreamTask(name, train, devs, metric, source)


def resolve_all(specs: Sequence[str], **options: object) -> list[DownstreamTask]:
    """Every ``--data`` value's tasks; task names must be unique."""
    tasks = [t for spec in specs for t in resolve_data(spec, **options)]  # type: ignore[arg-type]
    names = [t.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"task names {duplicates} repeat: name them with --data NAME=FILE")
    return tasks
