"""Preparation: documents -> per-task example datasets (Arrow), cached by fingerprint.

``prepare_data`` reads the corpus, splits documents into train/held-out by a hash of their
id, trains (or loads) the tokenizer, and has every task build its examples with
``datasets.map`` (``num_proc`` workers). Each document gets its own RNG seeded from
(seed, task, document id), so output does not depend on the number of workers. Documents a
task cannot use are counted by reason in ``data_report.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets

from ernie_cpt.config import RunConfig
from ernie_cpt.data import corpus as corpus_lib
from ernie_cpt.data.tokenization import load_or_train_tokenizer
from pretrain_tasks import build_task
from pretrain_tasks.base import PretrainTask, SkipDocument, stable_seed
from pretrain_tasks.document import Document

log = logging.getLogger(__name__)

SKIP_COLUMN = "__skip"
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
        """Up to ``limit`` sentences drawn without replacement, deterministically."""
        pairs = [
            (sentence, doc_id)
            for doc_id, paragraphs in zip(documents["id"], documents["paragraphs"], strict=True)
            for paragraph in paragraphs
            for sentence in paragraph["sentences"]
        ]
        if len(pairs) > limit:
            pairs = random.Random(seed).sample(pairs, limit)
        return cls([p[0] for p in pairs], [p[1] for p in pairs], split, heldout_fraction)

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


def task_features(task: PretrainTask) -> datasets.Features:
    """The Arrow schema of a task's examples (shared columns + its own + the skip marker)."""
    own = {name: COLUMN_TYPES[kind] for name, kind in task.example_columns().items()}
    return datasets.Features({**SHARED_FEATURES, **own, SKIP_COLUMN: datasets.Value("string")})


def build_batch(
    batch: Mapping[str, list[Any]], task: PretrainTask, corpus: SentencePool, seed: int
) -> dict[str, list[Any]]:
    """``datasets.map`` function: documents in, examples out (plus one row per skipped doc)."""
    columns = list(SHARED_FEATURES) + list(task.example_columns())
    out: dict[str, list[Any]] = {name: [] for name in [*columns, SKIP_COLUMN]}
    for i in range(len(batch["id"])):
        document = Document.from_record({key: batch[key][i] for key in batch})
        rng = random.Random(stable_seed(seed, task.name, document.id))
        try:
            examples = task.build_examples(document, corpus, rng)
            reason = "" if examples else "no_examples"
        except SkipDocument as skip:
            examples, reason = [], skip.reason
        for example in examples:
            for name in columns:
                out[name].append(example[name])
            out[SKIP_COLUMN].append("")
        if reason:
            for name in columns:
                out[name].append(None)
            out[SKIP_COLUMN].append(reason)
    return out


def build_task_split(
    task: PretrainTask,
    documents: datasets.Dataset,
    corpus: SentencePool,
    seed: int,
    num_proc: int,
    fingerprint: str,
) -> tuple[datasets.Dataset, dict[str, int]]:
    """Examples of one task from one split of documents, and skipped documents by reason."""
    mapped = documents.map(
        build_batch,
        batched=True,
        batch_size=16,
        num_proc=num_proc if num_proc > 1 and len(documents) > 1 else None,
        remove_columns=documents.column_names,
        features=task_features(task),
        fn_kwargs={"task": task, "corpus": corpus, "seed": seed},
        new_fingerprint=fingerprint,
        desc=f"prepare {task.name}",
    )
    skips = Counter(r for r in mapped[SKIP_COLUMN] if r)
    examples = mapped.filter(
        lambda r: [not s for s in r], input_columns=[SKIP_COLUMN], batched=True
    )
    return examples.remove_columns(SKIP_COLUMN), dict(skips)


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
    data = {k: v for k, v in asdict(config.data).items() if k not in ("num_proc", "cache_dir")}
    payload = {
        "corpus": corpus_fp,
        "tokenizer": tokenizer_fp,
        "tasks": config.tasks,
        "task_files": option_file_hashes(config.tasks),
        "data": data,
        "v": 1,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def default_cache_dir(config: RunConfig) -> Path:
    """``data.cache_dir`` or ``$ERNIE_CPT_CACHE`` or ``~/.cache/ernie-cpt``."""
    if config.data.cache_dir:
        return Path(config.data.cache_dir)
    return Path(os.environ.get("ERNIE_CPT_CACHE", Path.home() / ".cache" / "ernie-cpt"))


def sentence_texts(documents: datasets.Dataset, limit: int | None) -> Any:
    """Yield sentences of (the first ``limit``) documents, for tokenizer training."""
    count = len(documents) if limit is None else min(limit, len(documents))
    for paragraphs in documents.select(range(count))["paragraphs"]:
        for paragraph in paragraphs:
            yield from paragraph["sentences"]


def prepare_data(
    config: RunConfig, cache_dir: Path | None = None, progress: bool = True
) -> PreparedData:
    """Prepare (or load from cache) every configured task's train and held-out examples."""
    cache_dir = Path(cache_dir or default_cache_dir(config))
    if not progress:
        datasets.disable_progress_bars()
    corpus_fp = corpus_lib.corpus_fingerprint(config.data)
    documents, corpus_stats, corpus_skips = _documents(config, cache_dir, corpus_fp, progress)
    train_docs, heldout_docs = corpus_lib.split_heldout(
        documents, config.data.heldout_fraction, config.data.seed
    )
    tokenizer, tokenizer_fp = load_or_train_tokenizer(
        config.tokenizer,
        sentence_texts(train_docs, config.tokenizer.max_training_documents),
        cache_dir,
        corpus_fp,
    )
    tasks = {
        name: build_task(name, options, tokenizer, config.data.max_seq_length)
        for name, options in config.tasks.items()
    }
    fingerprint = data_fingerprint(config, corpus_fp, tokenizer_fp)
    root = cache_dir / "prepared" / fingerprint
    if not (root / "data_report.json").exists():
        _build_all(
            config, tasks, train_docs, heldout_docs, root, fingerprint, corpus_stats, corpus_skips
        )
    else:
        log.info("using prepared data from %s", root)
    train = {n: datasets.load_from_disk(str(root / n / "train")) for n in tasks}
    heldout = {n: datasets.load_from_disk(str(root / n / "heldout")) for n in tasks}
    report = json.loads((root / "data_report.json").read_text())
    return PreparedData(root, tokenizer, tokenizer_fp, tasks, train, heldout, report, fingerprint)


def _documents(
    config: RunConfig, cache_dir: Path, corpus_fp: str, progress: bool
) -> tuple[datasets.Dataset, dict[str, int], dict[str, int]]:
    """Documents from the corpus, cached on disk by corpus fingerprint."""
    target = cache_dir / "documents" / corpus_fp
    if (target / "stats.json").exists():
        saved = json.loads((target / "stats.json").read_text())
        return datasets.load_from_disk(str(target / "documents")), saved["stats"], saved["skipped"]
    started = time.perf_counter()
    documents, stats, skipped = corpus_lib.build_documents(
        config.data, num_proc=config.data.num_proc, progress=progress
    )
    stats = {**stats, "seconds": round(time.perf_counter() - started, 2)}
    tmp = target.with_name(f".tmp-{corpus_fp}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    documents.save_to_disk(str(tmp / "documents"))
    (tmp / "stats.json").write_text(json.dumps({"stats": stats, "skipped": skipped}, indent=2))
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, target)
    return datasets.load_from_disk(str(target / "documents")), stats, skipped


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
    for name, task in tasks.items():
        started = time.perf_counter()
        entry: dict[str, Any] = {"family": task.family, "level": task.level}
        for split, docs in splits.items():
            pool = pools[split]
            examples, skips = build_task_split(
                task, docs, pool, seed, num_proc, f"{fingerprint}-{name}-{split}"
            )
            examples.save_to_disk(str(tmp / name / split))
            entry[f"{split}_examples"] = len(examples)
            entry[f"{split}_skipped_documents"] = skips
            if split == "train":
                entry["labels"] = task.label_counts(examples[:]) if len(examples) else {}
                entry["tokens"] = int(sum(len(r) for r in examples["input_ids"]))
        entry["seconds"] = round(time.perf_counter() - started, 2)
        report["tasks"][name] = entry
        log.info(
            "prepared %s: %d train / %d held-out examples",
            name,
            entry["train_examples"],
            entry["heldout_examples"],
        )
    (tmp / "data_report.json").write_text(json.dumps(report, indent=2))
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, root)
