"""Preparation: documents -> per-task example datasets (Arrow), cached by fingerprint.

``prepare_data`` reads the corpus, splits documents into train/held-out by a hash of their
id, trains (or loads) the tokenizer, and builds every task's examples in one ``datasets.map``
pass per split (``num_proc`` workers): each document goes to all tasks in turn, so its
sentences are tokenized once for all of them (``pretrain_tasks.encoding``), and the pass's
rows are then saved task by task. Each (document, task) gets its own RNG seeded from
(seed, task, document id), so output depends neither on the number of workers nor on which
other tasks are configured. Documents a
task cannot use are counted by reason in ``data_report.json``, beside the CPU seconds each
task's ``build_examples`` took; a task left with no training example is an error (or
dropped with ``data.on_empty_task: skip``).

Memory stays flat in the corpus size: documents and examples live in memory-mapped Arrow
files (``load_from_disk``); statistics come from Arrow compute or batch by batch; the
"other document" sentence pool is a reservoir sample; the tokenizer reads an iterator over
an even sample of about ``TOKENIZER_SAMPLE_CHARS`` characters. ``shard=(i, N)`` (``ernie-cpt
prepare --shard i/N``) prepares every N-th raw record from the i-th into its own folder of
the same prepared output; a later unsharded call reads the N shards as one.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ernie_cpt.config import RunConfig
from ernie_cpt.data import corpus as corpus_lib
from ernie_cpt.data.corpus import DataError
from ernie_cpt.data.mapped_pages import (
    keep_arrow_pages_released,
    pause_arrow_page_release,
    releasing_every,
)
from ernie_cpt.data.tokenization import load_or_train_tokenizer
from pretrain_tasks import build_task
from pretrain_tasks.base import PretrainTask, SkipDocument, stable_seed
from pretrain_tasks.document import Document

log = logging.getLogger(__name__)

SKIP_COLUMN = "__skip"
TASK_COLUMN = "__task"
# CPU seconds of one (document, task) ``build_examples`` call, on the first of its rows
# (0.0 on the others): summed per task into the data report, dropped with the pass file.
SECONDS_COLUMN = "__cpu_seconds"
PASS_COLUMNS = (TASK_COLUMN, SKIP_COLUMN, SECONDS_COLUMN)  # the pass's own, in no task's data
# How often mapped Arrow pages are released while a mapped dataset is copied to disk (at
# memory speed: ~20 MB stay resident at 1 GB/s; a release costs ~1 ms).
SAVE_RELEASE_S = 0.02
# Inside a build's temporary folder: the pass files, removed before the folder moves in.
PASS_FOLDER = ".pass"
SHARED_FEATURES = {
    "input_ids": datasets.Sequence(datasets.Value("int32")),
    "token_type_ids": datasets.Sequence(datasets.Value("int8")),
    "word_starts": datasets.Sequence(datasets.Value("int8")),
}
COLUMN_TYPES = {
    "int": datasets.Value("int64"),
    "int_list": datasets.Sequence(datasets.Value("int32")),
    "float": datasets.Value("float32"),
    "str": datasets.Value("string"),
}
SENTENCE_POOL_SIZE = 200_000
ON_EMPTY_TASK = ("error", "skip")
FULL_COLLECTION_EVERY = 1000  # middle-generation collections per full one (CPython: 10)
# Net new container objects between two young collections (CPython: 700); also the most
# cyclic garbage that can wait for one.
YOUNG_COLLECTION_EVERY = 200_000
# The tokenizer is trained on every stride-th training document, the stride chosen so that
# about this many characters are read (corpora up to this size: all of them).
TOKENIZER_SAMPLE_CHARS = 200_000_000
# The prepared examples' format version (with the corpus PIPELINE_VERSION in every cache key).
DATA_FORMAT_VERSION = 2


class SentencePool:
    """Sentences sampled from many documents, for "a sentence of another document"."""

    def __init__(
        self,
        sentences: Sequence[str],
        document_ids: Sequence[str],
        split: str = "train",
        heldout_fraction: float = 0.0,
    ) -> None:
        self.sentences = list(sentences)
        self.document_ids = list(document_ids)
        self.distinct_documents = len(set(self.document_ids))
        self.split = split
        self.heldout_fraction = heldout_fraction

    @classmethod
    def from_documents(
        cls,
        documents: datasets.Dataset,
        seed: int,
        split: str = "train",
        heldout_fraction: float = 0.0,
        limit: int = SENTENCE_POOL_SIZE,
    ) -> SentencePool:
        """Up to ``limit`` sentences drawn without replacement, deterministically.

        Reservoir sampling (Algorithm R) over the documents read in batches, so memory holds
        the pool only, whatever the corpus size. With at most ``limit`` sentences the pool is
        every sentence in corpus order.
        """
        rng = random.Random(seed)
        sentences: list[str] = []
        owners: list[str] = []
        seen = 0
        for batch in documents.select_columns(["id", "paragraphs"]).iter(batch_size=256):
            for doc_id, paragraphs in zip(batch["id"], batch["paragraphs"], strict=True):
                for paragraph in paragraphs:
                    for sentence in paragraph["sentences"]:
                        seen += 1
                        if len(sentences) < limit:
                            sentences.append(sentence)
                            owners.append(doc_id)
                            continue
                        slot = rng.randrange(seen)
                        if slot < limit:
                            sentences[slot], owners[slot] = sentence, doc_id
        return cls(sentences, owners, split, heldout_fraction)

    def random_sentence(self, rng: random.Random, exclude_document: str) -> str | None:
        """A sentence from a document other than ``exclude_document``; bounded work.

        Up to 16 random draws, then a scan from a random start: never loops forever and
        returns None only when no other document is in the pool.
        """
        if (
            not self.sentences
            or self.distinct_documents < 2
            and self.document_ids[0] == exclude_document
        ):
            return None
        size = len(self.sentences)
        for _ in range(16):
            index = rng.randrange(size)
            if self.document_ids[index] != exclude_document:
                return self.sentences[index]
        start = rng.randrange(size)
        for offset in range(size):
            index = (start + offset) % size
            if self.document_ids[index] != exclude_document:
                return self.sentences[index]
        return None


@dataclass
class PreparedData:
    """What training needs: the tokenizer, the tasks, and their train/held-out examples."""

    root: Path
    tokenizer: Any
    tokenizer_fingerprint: str
    tasks: dict[str, PretrainTask]
    train: dict[str, datasets.Dataset]
    heldout: dict[str, datasets.Dataset]
    report: dict[str, Any]
    fingerprint: str


def task_columns(task: PretrainTask) -> list[str]:
    """The columns of a task's examples: the shared ones, then its own."""
    return [*SHARED_FEATURES, *task.example_columns()]


def prepared_features(tasks: Mapping[str, PretrainTask]) -> datasets.Features:
    """The Arrow schema of one pass over the documents: the shared columns, every task's own
    columns (null in other tasks' rows), the task of each row and the skip marker."""
    own: dict[str, Any] = {}
    for task in tasks.values():
        for name, kind in task.example_columns().items():
            if name in own or name in SHARED_FEATURES or name in PASS_COLUMNS:
                raise DataError(f"task {task.name!r}: column {name!r} is also another task's")
            own[name] = COLUMN_TYPES[kind]
    extra = {
        TASK_COLUMN: datasets.Value("string"),
        SKIP_COLUMN: datasets.Value("string"),
        SECONDS_COLUMN: datasets.Value("float64"),
    }
    return datasets.Features({**SHARED_FEATURES, **own, **extra})


def build_batch(
    batch: Mapping[str, list[Any]],
    tasks: Mapping[str, PretrainTask],
    corpus: SentencePool,
    seed: int,
    columns: Sequence[str],
) -> dict[str, list[Any]]:
    """``datasets.map`` function: documents in, every task's examples out (plus one row per
    task and skipped document). All tasks see a document one after another, so its sentences
    are tokenized once (``pretrain_tasks.encoding``'s memo), not once per task; a task's
    CPU time (``SECONDS_COLUMN``) includes tokenizing the sentences it is first to ask for."""
    keep_arrow_pages_released()  # in this (possibly forked worker) process too
    out: dict[str, list[Any]] = {name: [] for name in [*columns, *PASS_COLUMNS]}
    owned = {name: set(task_columns(task)) for name, task in tasks.items()}
    for i in range(len(batch["id"])):
        document = Document.from_record({key: batch[key][i] for key in batch})
        for name, task in tasks.items():
            rng = random.Random(stable_seed(seed, task.name, document.id))
            started = time.process_time()
            try:
                examples = task.build_examples(document, corpus, rng)
                reason = "" if examples else "no_examples"
            except SkipDocument as skip:
                examples, reason = [], skip.reason
            out[SECONDS_COLUMN].append(time.process_time() - started)
            rows = len(examples) + bool(reason)
            for column in columns:  # column by column: C-level extends, not cell appends
                if column in owned[name]:
                    out[column] += [example[column] for example in examples]
                    out[column] += [None] * bool(reason)
                else:
                    out[column] += [None] * rows
            out[TASK_COLUMN] += [name] * rows
            out[SKIP_COLUMN] += [""] * len(examples) + ([reason] if reason else [])
            out[SECONDS_COLUMN] += [0.0] * (rows - 1)
    return out


def build_split(
    tasks: Mapping[str, PretrainTask],
    documents: datasets.Dataset,
    corpus: SentencePool,
    seed: int,
    num_proc: int,
    fingerprint: str,
    cache_file: Path | None = None,
) -> datasets.Dataset:
    """Every task's examples (and skip rows) from one split of documents, in one pass
    (written to ``cache_file``, default: datasets' cache beside the documents)."""
    features = prepared_features(tasks)
    columns = [name for name in features if name not in PASS_COLUMNS]
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
    mapped = documents.map(
        build_batch,
        batched=True,
        batch_size=16,
        num_proc=num_proc if num_proc > 1 and len(documents) > 1 else None,
        remove_columns=documents.column_names,
        features=features,
        fn_kwargs={"tasks": tasks, "corpus": corpus, "seed": seed, "columns": columns},
        new_fingerprint=fingerprint,
        cache_file_name=None if cache_file is None else str(cache_file),
        desc=f"prepare {len(tasks)} task(s)",
    )
    flush_to_disk(entry["filename"] for entry in mapped.cache_files)
    return mapped


def flush_to_disk(files: Iterable[str | Path]) -> None:
    """``fsync`` files just written, so that their pages are clean: the kernel can then
    reclaim them once read (``mapped_pages``), where dirty pages of a freshly written Arrow
    file would stay resident in every process reading it until writeback."""
    for file in files:
        handle = os.open(file, os.O_RDONLY)
        try:
            os.fsync(handle)
        except OSError:  # file systems without fsync
            pass
        finally:
            os.close(handle)


def save_dataset(dataset: datasets.Dataset, target: Path, **options: Any) -> None:
    """``save_to_disk``, releasing mapped pages often meanwhile (the copy reads a mapped
    dataset at memory speed), then ``fsync`` of the written files (they are read next)."""
    with releasing_every(SAVE_RELEASE_S):
        dataset.save_to_disk(str(target), **options)
    flush_to_disk(target.glob("*.arrow"))


def save_task_split(
    mapped: datasets.Dataset, task: PretrainTask, name: str, target: Path
) -> tuple[datasets.Dataset, dict[str, int]]:
    """One task's examples of a pass, saved to ``target`` and loaded back (memory-mapped),
    and its skipped documents by reason (most frequent first)."""
    rows = pc.equal(mapped.data.column(TASK_COLUMN), name)
    reasons = pc.filter(mapped.data.column(SKIP_COLUMN), rows)
    skips = {
        entry["values"]: entry["counts"]
        for entry in pc.value_counts(reasons).to_pylist()
        if entry["values"]
    }
    kept = pc.and_(rows, pc.equal(mapped.data.column(SKIP_COLUMN), ""))
    keep = np.flatnonzero(kept.to_numpy(zero_copy_only=False))
    if len(keep):
        save_dataset(mapped.select(keep).select_columns(task_columns(task)), target)
    else:  # an empty selection saves no Arrow block (it would not load): one empty shard
        features = datasets.Features({c: mapped.features[c] for c in task_columns(task)})
        empty = pa.Table.from_pylist([], schema=features.arrow_schema)
        save_dataset(datasets.Dataset(empty), target, num_shards=1)
    ordered = dict(sorted(skips.items(), key=lambda item: -item[1]))
    return datasets.load_from_disk(str(target)), ordered


def summed_label_counts(
    task: PretrainTask, examples: datasets.Dataset, batch_size: int = 1024
) -> dict[str, int]:
    """``task.label_counts`` summed over batches of examples (counts are additive), so the
    examples are never all in memory at once."""
    totals: dict[str, int] = {}
    for batch in examples.with_format("arrow").iter(batch_size=batch_size):
        for key, value in task.label_counts(LazyColumns(batch)).items():
            totals[key] = totals.get(key, 0) + int(value)
    return totals


class LazyColumns(Mapping[str, list[Any]]):
    """An Arrow table's columns as Python lists, each converted when first read: a task's
    ``label_counts`` reads two or three of an example's columns, and converting all of them
    (``Dataset.iter``'s Python format) took 70% of counting."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.converted: dict[str, list[Any]] = {}

    def __getitem__(self, key: str) -> list[Any]:
        if key not in self.converted:
            if key not in self.table.column_names:
                raise KeyError(key)
            self.converted[key] = self.table.column(key).to_pylist()
        return self.converted[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.table.column_names)

    def __len__(self) -> int:
        return self.table.num_columns


def top_token_share(examples: datasets.Dataset, special_ids: Sequence[int]) -> float | None:
    """Share of the most frequent non-special token among the examples' input tokens: the
    masked-token accuracy of always predicting that token (a masking task's chance level,
    since any non-special token may be masked). None without tokens."""
    if not len(examples):
        return None
    flat = pc.list_flatten(examples.data.column("input_ids"))
    counts = pc.value_counts(flat)
    special = set(int(i) for i in special_ids)
    values, numbers = counts.field("values").to_pylist(), counts.field("counts").to_pylist()
    kept = [int(c) for v, c in zip(values, numbers, strict=True) if int(v) not in special]
    return round(max(kept) / sum(kept), 6) if kept else None


def split_label_entry(task: PretrainTask, split: str, examples: datasets.Dataset) -> dict:
    """The data report's label counts of one split (``labels`` for train, ``heldout_labels``
    for held-out: the report's chance levels use the held-out ones), its token count, and for
    a masking task the held-out top-token share."""
    if split != "train":
        if not len(examples):
            return {}
        entry: dict[str, Any] = {"heldout_labels": summed_label_counts(task, examples)}
        if task.masks_inputs:
            special = getattr(task.tokenizer, "all_special_ids", [])
            entry["heldout_top_token_share"] = top_token_share(examples, special)
        return entry
    labels = summed_label_counts(task, examples) if len(examples) else {}
    return {"labels": labels, "tokens": token_count(examples)}


def token_count(examples: datasets.Dataset) -> int:
    """Tokens over all examples, from the Arrow list lengths (no Python lists)."""
    if not len(examples):
        return 0
    lengths = pc.list_value_length(examples.data.column("input_ids"))
    return int(pc.sum(lengths).as_py() or 0)


def option_file_hashes(tasks: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """sha256 of every task option naming an existing file (user data, gazetteers), so that
    editing such a file invalidates the prepared data."""
    hashes = {}
    for task, options in tasks.items():
        for key, value in options.items():
            if isinstance(value, str) and value and Path(value).is_file():
                hashes[f"{task}.{key}"] = hashlib.sha256(Path(value).read_bytes()).hexdigest()
    return hashes


def data_fingerprint(config: RunConfig, corpus_fp: str, tokenizer_fp: str) -> str:
    """Identity of the prepared data: corpus, tokenizer, tasks and data settings."""
    data = {
        k: v
        for k, v in asdict(config.data).items()
        if k not in ("num_proc", "cache_dir", "on_empty_task")
    }
    payload = {
        "corpus": corpus_fp,
        "tokenizer": tokenizer_fp,
        "tasks": config.tasks,
        "task_files": option_file_hashes(config.tasks),
        "data": data,
        "v": DATA_FORMAT_VERSION,
        "pipeline": corpus_lib.PIPELINE_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def default_cache_dir(config: RunConfig) -> Path:
    """``data.cache_dir`` or ``$ERNIE_CPT_CACHE`` or ``~/.cache/ernie-cpt``."""
    if config.data.cache_dir:
        return Path(config.data.cache_dir)
    return Path(os.environ.get("ERNIE_CPT_CACHE", Path.home() / ".cache" / "ernie-cpt"))


def sentence_texts(documents: datasets.Dataset, limit: int | None, stride: int = 1) -> Any:
    """Yield sentences of (the first ``limit``) documents, every ``stride``-th one, for
    tokenizer training."""
    count = len(documents) if limit is None else min(limit, len(documents))
    chosen = documents.select(range(0, count, stride)).select_columns(["paragraphs"])
    for batch in chosen.iter(batch_size=256):  # a batch at a time: memory stays flat
        for paragraphs in batch["paragraphs"]:
            for paragraph in paragraphs:
                yield from paragraph["sentences"]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` (0 <= i < N) -> (i, N)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise DataError(f"--shard {text!r}: expected i/N with 0 <= i < N, e.g. 0/4")
    return index, count


@contextlib.contextmanager
def rare_collections(
    young_every: int = YOUNG_COLLECTION_EVERY, full_every: int = FULL_COLLECTION_EVERY
) -> Iterator[None]:
    """Inside the block, the objects alive on entry (the imported torch, transformers and
    datasets: ~300k of them) are frozen out of the cyclic collector (``gc.freeze``), a young
    collection waits for ``young_every`` net new container objects (CPython: 700) and a
    full one for ``full_every`` middle-generation ones (CPython: 10).

    Preparation allocates tens of millions of short-lived lists and tuples and keeps
    ~10^5-10^6 of them alive in the task memos. Each full collection walks every tracked
    object: between them they took ~20% of the CPU time of preparing all eight tasks
    (`benchmarks/prepare_throughput.py`), more as the memos filled. Young collections at
    CPython's rate (every 700 net allocations, ~20k of them per 24 MB) walked the memos'
    newest entries again and again: another ~10% directly and more through the caches they
    evicted. CPython counts allocations minus frees, so the young threshold bounds the
    cyclic garbage that can accumulate (at most ``young_every`` objects before a
    collection frees it); objects freed by reference counting (nearly all) never wait.
    """
    threshold, frozen_before = gc.get_threshold(), gc.get_freeze_count()
    gc.freeze()
    gc.set_threshold(max(threshold[0], young_every), threshold[1], max(threshold[2], full_every))
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        if not frozen_before:  # a caller's own freeze stays as it was
            gc.unfreeze()


def prepare_data(
    config: RunConfig,
    cache_dir: Path | None = None,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
) -> PreparedData:
    """Prepare (or load from cache) every configured task's train and held-out examples.

    With ``shard=(i, N)`` only every N-th raw record from the i-th on is prepared, into
    ``<prepared>/shards/i-of-N``; N such jobs need no coordinator, and a later call without
    ``shard`` reads all N shards (memory-mapped, concatenated without copying). Sharding
    needs a fixed tokenizer (``tokenizer.path``), so every job tokenizes alike.
    """
    keep_arrow_pages_released()  # RSS stays flat however much Arrow the passes read
    try:
        with rare_collections():
            return _prepare(config, cache_dir, progress, shard)
    finally:
        pause_arrow_page_release()  # training re-reads its pages: leave them resident


def _prepare(
    config: RunConfig, cache_dir: Path | None, progress: bool, shard: tuple[int, int] | None
) -> PreparedData:
    """``prepare_data`` while mapped Arrow pages are being released."""
    cache_dir = Path(cache_dir or default_cache_dir(config))
    if config.data.on_empty_task not in ON_EMPTY_TASK:
        raise DataError(
            f"unknown data.on_empty_task {config.data.on_empty_task!r}; use one of {ON_EMPTY_TASK}"
        )
    if shard is not None and config.tokenizer.path is None:
        raise DataError(
            "prepare --shard needs tokenizer.path (every job must tokenize alike): point it "
            "at an existing tokenizer, e.g. <run>/tokenizer or one from an unsharded prepare"
        )
    if not progress:
        datasets.disable_progress_bars()
    corpus_fp = corpus_lib.corpus_fingerprint(config.data)
    splits = functools.cache(
        lambda: _split_documents(config, cache_dir, corpus_fp, progress, shard)
    )
    tokenizer, tokenizer_fp = load_or_train_tokenizer(
        config.tokenizer,
        _lazy_sentences(splits, config.tokenizer.max_training_documents),
        cache_dir,
        corpus_fp,
    )
    tasks = {
        name: build_task(name, options, tokenizer, config.data.max_seq_length)
        for name, options in config.tasks.items()
    }
    fingerprint = data_fingerprint(config, corpus_fp, tokenizer_fp)
    root = cache_dir / "prepared" / fingerprint
    target = root if shard is None else root / "shards" / f"{shard[0]}-of-{shard[1]}"
    parts = [target] if shard is not None else _complete_shards(root) or [root]
    if not all((part / "data_report.json").exists() for part in parts):
        (train_docs, heldout_docs), stats, skips = splits()
        _build_all(config, tasks, train_docs, heldout_docs, target, fingerprint, stats, skips)
    else:
        log.info("using prepared data from %s", ", ".join(map(str, parts)))
    train = {n: _load_parts(parts, n, "train") for n in tasks}
    heldout = {n: _load_parts(parts, n, "heldout") for n in tasks}
    report = merge_reports([json.loads((p / "data_report.json").read_text()) for p in parts])
    data = PreparedData(root, tokenizer, tokenizer_fp, tasks, train, heldout, report, fingerprint)
    return data if shard is not None else check_empty_tasks(data, config.data.on_empty_task)


def _split_documents(
    config: RunConfig,
    cache_dir: Path,
    corpus_fp: str,
    progress: bool,
    shard: tuple[int, int] | None,
) -> tuple[tuple[datasets.Dataset, datasets.Dataset], dict[str, Any], dict[str, int]]:
    """((train, held-out) documents, corpus stats, skipped inputs); made only when needed."""
    documents, stats, skipped = _documents(config, cache_dir, corpus_fp, progress, shard)
    split = corpus_lib.split_heldout(documents, config.data.heldout_fraction, config.data.seed)
    return split, stats, skipped


def _lazy_sentences(splits: Callable[[], Any], limit: int | None) -> Iterator[str]:
    """Tokenizer training text; the documents are built only if the tokenizer is trained."""
    (train_docs, _), stats, _ = splits()
    # An even spread of about TOKENIZER_SAMPLE_CHARS of text: every document when smaller.
    stride = max(1, math.ceil(stats.get("characters", 0) / TOKENIZER_SAMPLE_CHARS))
    yield from sentence_texts(train_docs, limit, stride)


def _complete_shards(root: Path) -> list[Path]:
    """The shard folders of one complete ``--shard i/N`` set (all N reported), else []."""
    folders = [f for f in (root / "shards").glob("*-of-*") if not f.name.startswith(".")]
    for count in sorted({int(f.name.split("-of-")[1]) for f in folders}, reverse=True):
        parts = [root / "shards" / f"{i}-of-{count}" for i in range(count)]
        if all((part / "data_report.json").exists() for part in parts):
            return parts
    return []


def _load_parts(parts: Sequence[Path], task: str, split: str) -> datasets.Dataset:
    """One task split, from one folder or concatenated from shards (memory-mapped)."""
    loaded = [datasets.load_from_disk(str(part / task / split)) for part in parts]
    return loaded[0] if len(loaded) == 1 else datasets.concatenate_datasets(loaded)


def merge_reports(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Shard reports as one: numbers add up, lists concatenate, other values from the first."""

    def merge(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            return {
                k: merge(a[k], b[k]) if k in a and k in b else a.get(k, b.get(k))
                for k in {**a, **b}
            }
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            return a + b
        if isinstance(a, list) and isinstance(b, list):
            return a + b
        return a

    merged = dict(reports[0])
    for report in reports[1:]:
        merged = merge(merged, report)
    if len(reports) > 1:
        merged["shards"] = len(reports)
    return merged


def check_empty_tasks(data: PreparedData, on_empty_task: str) -> PreparedData:
    """Refuse (or, with ``skip``, drop with a warning) every task without training examples."""
    empty = [name for name in data.tasks if len(data.train[name]) == 0]
    if not empty:
        return data
    lines = []
    for name in empty:
        entry = data.report["tasks"].get(name, {})
        skips = {**entry.get("train_skipped_documents", {})}
        reasons = ", ".join(f"{k}: {v}" for k, v in skips.items()) or "no documents"
        lines.append(f"  {name}: skipped documents by reason: {reasons}")
    detail = "\n".join(lines)
    if on_empty_task == "error":
        raise DataError(
            f"{len(empty)} task(s) have no training examples in {data.root}:\n{detail}\n"
            "remove them from tasks:, or set data.on_empty_task: skip to drop them with a warning"
        )
    log.warning("dropping tasks without training examples (data.on_empty_task: skip):\n%s", detail)
    for name in empty:
        for table in (data.tasks, data.train, data.heldout):
            table.pop(name)
    data.report["dropped_empty_tasks"] = empty
    return data


def _documents(
    config: RunConfig,
    cache_dir: Path,
    corpus_fp: str,
    progress: bool,
    shard: tuple[int, int] | None = None,
) -> tuple[datasets.Dataset, dict[str, Any], dict[str, int]]:
    """Documents from the corpus (or one shard of it), cached on disk by corpus fingerprint."""
    name = corpus_fp if shard is None else f"{corpus_fp}-{shard[0]}-of-{shard[1]}"
    target = cache_dir / "documents" / name
    if (target / "stats.json").exists():
        saved = json.loads((target / "stats.json").read_text())
        return datasets.load_from_disk(str(target / "documents")), saved["stats"], saved["skipped"]
    started = time.perf_counter()
    documents, stats, skipped = corpus_lib.build_documents(
        config.data, num_proc=config.data.num_proc, progress=progress, shard=shard
    )
    if len(documents) == 0:
        reasons = ", ".join(f"{k}: {v}" for k, v in skipped.items() if v) or "none"
        hint = (
            f"; documents over data.max_document_chars ({config.data.max_document_chars:,}) "
            "are skipped: raise it, or for plain text with documents separated by blank "
            "lines set data.text_sample_by: paragraph"
            if skipped.get("document_too_long")
            else ""
        )
        raise DataError(
            f"corpus {config.data.corpus!r}: no documents ({stats.get('raw_records', 0)} "
            f"records read; skipped by reason: {reasons}){hint}"
        )
    stats = {**stats, "seconds": round(time.perf_counter() - started, 2)}
    tmp = target.with_name(f".tmp-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_dataset(documents, tmp / "documents")
    (tmp / "stats.json").write_text(json.dumps({"stats": stats, "skipped": skipped}, indent=2))
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, target)
    return datasets.load_from_disk(str(target / "documents")), stats, skipped


def _save_tasks(
    mapped: datasets.Dataset,
    tasks: Mapping[str, PretrainTask],
    split: str,
    tmp: Path,
    entries: dict[str, dict[str, Any]],
) -> None:
    """Save one pass's rows task by task under ``tmp`` (counts and labels into ``entries``),
    then remove the pass file: every task's columns, an intermediate as large as the output."""
    for name, task in tasks.items():
        examples, skips = save_task_split(mapped, task, name, tmp / name / split)
        entry = entries[name]
        entry[f"{split}_examples"] = len(examples)
        entry[f"{split}_skipped_documents"] = skips
        entry.update(split_label_entry(task, split, examples))
        entry[f"{split}_cpu_seconds"] = task_cpu_seconds(mapped, name)
    shutil.rmtree(tmp / PASS_FOLDER)


def task_cpu_seconds(mapped: datasets.Dataset, name: str) -> float:
    """CPU seconds that task ``name``'s ``build_examples`` took over a pass (all workers)."""
    rows = pc.equal(mapped.data.column(TASK_COLUMN), name)
    total = pc.sum(pc.filter(mapped.data.column(SECONDS_COLUMN), rows)).as_py()
    return round(total or 0.0, 6)


def _build_all(
    config: RunConfig,
    tasks: Mapping[str, PretrainTask],
    train_docs: datasets.Dataset,
    heldout_docs: datasets.Dataset,
    root: Path,
    fingerprint: str,
    corpus_stats: Mapping[str, int],
    corpus_skips: Mapping[str, int],
) -> None:
    """Build every task's splits into a temporary folder, then move it into place."""
    tmp = root.with_name(f".tmp-{root.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    seed, num_proc = config.data.seed, config.data.num_proc
    report: dict[str, Any] = {
        "fingerprint": fingerprint,
        "corpus": config.data.corpus,
        "documents": {**corpus_stats, "train": len(train_docs), "heldout": len(heldout_docs)},
        "skipped_inputs": dict(corpus_skips),
        "tasks": {},
    }
    splits = {"train": train_docs, "heldout": heldout_docs}
    # One pool per split, shared by every task (it depends only on the split's documents).
    pools = {
        split: SentencePool.from_documents(docs, seed, split, config.data.heldout_fraction)
        for split, docs in splits.items()
    }
    entries: dict[str, dict[str, Any]] = {
        name: {"family": task.family, "level": task.level} for name, task in tasks.items()
    }
    for split, docs in splits.items():
        started = time.perf_counter()
        mapped = build_split(
            tasks, docs, pools[split], seed, num_proc, f"{fingerprint}-{split}",
            cache_file=tmp / PASS_FOLDER / f"{split}.arrow",
        )  # fmt: skip
        _save_tasks(mapped, tasks, split, tmp, entries)
        del mapped  # unmaps the removed pass file
        report[f"{split}_seconds"] = round(time.perf_counter() - started, 2)
    for name, entry in entries.items():
        report["tasks"][name] = entry
        log.info(
            "prepared %s: %d train / %d held-out examples (%.1f CPU-s)",
            name,
            entry["train_examples"],
            entry["heldout_examples"],
            entry["train_cpu_seconds"] + entry["heldout_cpu_seconds"],
        )
    (tmp / "data_report.json").write_text(json.dumps(report, indent=2))
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, root)
