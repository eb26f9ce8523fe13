"""IR relevance: how relevant a passage is to a query, 3 classes (ERNIE 2.0, section 4.2.3).

The paper paired search queries (segment A) with result titles (segment B) from search
logs: 0 strong relevance (clicked), 1 weak relevance (shown, not clicked), 2 irrelevant
(random). Those logs were never released, so:

- ``user_data`` (a .jsonl file with keys query, title, label, or a .tsv with columns query,
  title, label and an optional header line; labels 0/1/2 or strong/weak/irrelevant) gives
  the examples. The file is read once when the task is built; each row is yielded by
  exactly one document of the corpus view (see ``base.UserRows``).
  Documents given no row are skipped ("no_user_rows_for_document").
- Without it, a stand-in from the corpus. Queries: the document title and each distinct
  section heading (``Paragraph.heading``), up to ``max_queries_per_document``. For each
  query one example of every class the corpus allows:
  0 strong = the lead sentence of the document (title query) or of the section (heading
  query); 1 weak = the top BM25 hit (``bm25s``, query text + lead sentence as the search
  query, so the hit is lexically similar to the relevant passage) among sentences of OTHER
  documents, with a positive score and a text different from the lead; 2 irrelevant = a
  random sentence of another document (``corpus.random_sentence``). Every passage is one
  sentence, so passage length does not give the class away. A query with no BM25 hit gets
  no weak example. Documents without sentences, without a title or heading, or in a
  corpus with no other document are skipped ("no_sentences", "no_title_or_heading",
  "no_other_document").

The BM25 index covers the sentences of the corpus view (a ``SentencePool``: ``sentences``
and ``document_ids``), the first ``max_index_passages`` of them. It is built on first use
and cached on the task for that corpus object (the pool is a random sample already, so
the first N are a random subset); the cache is dropped when the task is pickled, so each
``datasets.map`` worker builds its own, once.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pretrain_tasks.base import (
    CorpusView,
    SentenceClassification,
    SkipDocument,
    UserRows,
    read_user_rows,
)
from pretrain_tasks.document import Document
from pretrain_tasks.packing import encode_pair
from schedules import options

LABEL_COLUMN = "ir_relevance_label"
STRONG, WEAK, IRRELEVANT = 0, 1, 2
LABEL_NAMES = ("strong", "weak", "irrelevant")


# ---------------------------------------------------------------- queries and passages


def _has_text(text: str | None) -> bool:
    return text is not None and any(c.isalnum() for c in text)


def title_and_heading_queries(document: Document) -> list[tuple[str, str]]:
    """(query, lead sentence): the title with the document's first sentence, then each
    distinct section heading with the first sentence of its section."""
    first = next((s for s in document.sentences() if _has_text(s)), None)
    if first is None:
        return []
    queries, seen = [], set()
    if _has_text(document.title):
        queries.append((document.title.strip(), first))
        seen.add(document.title.strip().lower())
    for paragraph in document.paragraphs:
        heading = paragraph.heading
        lead = next((s for s in paragraph.sentences if _has_text(s)), None)
        if not _has_text(heading) or lead is None or heading.strip().lower() in seen:
            continue
        seen.add(heading.strip().lower())
        queries.append((heading.strip(), lead))
    return queries


class PassageIndex:
    """BM25 over (sentence, document id) passages; ``best_other`` skips one document."""

    def __init__(self, passages: Sequence[str], document_ids: Sequence[str]) -> None:
        import bm25s

        tokens = bm25s.tokenize(
            list(passages), stopwords="en", show_progress=False, return_ids=False
        )
        keep = [i for i, words in enumerate(tokens) if words]  # bm25s needs some words
        self.passages = [passages[i] for i in keep]
        codes: dict[str, int] = {}
        self.document_codes = np.array(
            [codes.setdefault(document_ids[i], len(codes)) for i in keep], dtype=np.int64
        )
        self.code_of = codes
        self.retriever = None
        if keep:
            self.retriever = bm25s.BM25()
            self.retriever.index([tokens[i] for i in keep], show_progress=False)

    def best_other(self, query: str, exclude_document: str, exclude_text: str) -> str | None:
        """The top-scoring passage (score > 0) not of ``exclude_document``, not ``exclude_text``."""
        import bm25s

        if self.retriever is None:
            return None
        words = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)
        ids = self.retriever.get_tokens_ids(words[0])
        if not ids:
            return None
        scores = np.asarray(self.retriever.get_scores_from_ids(ids), dtype=np.float64).copy()
        own = self.code_of.get(exclude_document)
        if own is not None:
            scores[self.document_codes == own] = 0.0
        for index in top_positive(scores, 8):
            if self.passages[index].strip() != exclude_text.strip():
                return self.passages[index]
        return None


def top_positive(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the (at most) ``k`` highest positive scores, highest first, ties in index
    order: the first ``k`` of ``np.argsort(-scores, kind="stable")`` that are positive, at
    the cost of the positives only (a query shares a word with few of the index's up to
    ``max_index_passages`` passages; sorting them all cost ~3 ms per query at 50,000), and
    of those only the ones scoring at least the k-th highest (``np.partition``, linear), ties
    with it included so the stable order among equals is kept."""
    positive = np.flatnonzero(scores > 0.0)
    if 0 < k < len(positive):  # only those at least the k-th highest can be in the first k
        values = scores[positive]
        kth = np.partition(values, len(values) - k)[len(values) - k]
        positive = positive[values >= kth]
    return positive[np.argsort(-scores[positive], kind="stable")[:k]]


def draw_examples(
    queries: Sequence[tuple[str, str]],
    document_id: str,
    corpus: CorpusView,
    index: PassageIndex | None,
    rng: random.Random,
) -> list[tuple[str, str, int]]:
    """(query, passage, label) for every class each query allows."""
    out = []
    for query, lead in queries:
        out.append((query, lead, STRONG))
        weak = index.best_other(f"{query} {lead}", document_id, lead) if index else None
        if weak is not None:
            out.append((query, weak, WEAK))
        other = corpus.random_sentence(rng, exclude_document=document_id)
        if other is None:
            raise SkipDocument("no_other_document")
        out.append((query, other, IRRELEVANT))
    return out


# ---------------------------------------------------------------- user data


def parse_label(value: Any, where: str) -> int:
    """0/1/2 (int or digit string) or strong/weak/irrelevant."""
    text = str(value).strip().lower()
    if text in LABEL_NAMES:
        return LABEL_NAMES.index(text)
    if text in ("0", "1", "2"):
        return int(text)
    raise ValueError(f"{where}: label must be 0, 1, 2 or one of {LABEL_NAMES}, got {value!r}")


def read_relevance_data(path: str | Path) -> list[tuple[str, str, int]]:
    """(query, title, label) rows from a .jsonl or .tsv file."""
    rows = read_user_rows(path, ("query", "title", "label"))
    return [(query, title, parse_label(label, where)) for where, (query, title, label) in rows]


# ---------------------------------------------------------------- the task


@dataclass(frozen=True)
class IRRelevanceSettings(options.Settings):
    """Options of the ``ir_relevance`` task."""

    user_data: str | None = None
    max_queries_per_document: int = options.bounded(8, low=1)
    max_index_passages: int = options.bounded(50_000, low=1)


class IRRelevanceTask(SentenceClassification):
    """Classify a (query, passage) pair as strongly / weakly relevant or irrelevant."""

    name: ClassVar[str] = "ir_relevance"
    family: ClassVar[str] = "semantic-aware"
    level: ClassVar[str] = "sentence"
    Settings: ClassVar[type] = IRRelevanceSettings
    label_column: ClassVar[str] = LABEL_COLUMN
    label_names = LABEL_NAMES
    num_labels = 3

    def __init__(self, settings: IRRelevanceSettings, tokenizer: Any, max_seq_length: int) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.user_rows: list[tuple[str, str, int]] = []
        if settings.user_data is not None:
            self.user_rows = read_relevance_data(settings.user_data)
            self._assignment = UserRows(len(self.user_rows), f"{self.name}:{settings.user_data}")
        self._index: tuple[Any, PassageIndex] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_index": None}  # each worker builds its own index

    def passage_index(self, corpus: Any) -> PassageIndex | None:
        """The BM25 index over ``corpus``'s sentences (built once per corpus object)."""
        if self._index is None or self._index[0] is not corpus:
            sentences = getattr(corpus, "sentences", None)
            ids = getattr(corpus, "document_ids", None)
            if sentences is None or ids is None:
                return None
            limit = self.settings.max_index_passages
            self._index = (corpus, PassageIndex(sentences[:limit], ids[:limit]))
        return self._index[1]

    def build_examples(
        self, document: Document, corpus: CorpusView, rng: random.Random
    ) -> list[dict[str, Any]]:
        """User rows assigned to this document, or the title/heading stand-in."""
        if self.settings.user_data is not None:
            rows = [self.user_rows[i] for i in self._assignment.for_document(corpus, document.id)]
            if not rows:
                raise SkipDocument("no_user_rows_for_document")
        else:
            if not any(_has_text(s) for s in document.sentences()):
                raise SkipDocument("no_sentences")
            queries = title_and_heading_queries(document)
            if not queries:
                raise SkipDocument("no_title_or_heading")
            limit = self.settings.max_queries_per_document
            if len(queries) > limit:
                queries = [queries[i] for i in sorted(rng.sample(range(len(queries)), limit))]
            rows = draw_examples(queries, document.id, corpus, self.passage_index(corpus), rng)
        return [
            {**encode_pair(self.tokenizer, query, passage, self.max_seq_length), LABEL_COLUMN: y}
            for query, passage, y in rows
        ]
