"""Sentence reordering: recover the order of a shuffled paragraph (ERNIE 2.0, section 4.2.2).

"A given paragraph is randomly split into 1 to m segments and all of the combinations are
shuffled by a random permuted order"; the model classifies which permutation was applied,
over k = sum_{n=1..m} n! classes (m=3: 9 classes, m=5: 153).

Choices left open by the paper, made here:

- Units. Segments are cut at sentence boundaries inside one paragraph (``Paragraph``). A
  paragraph longer than the token budget is cut into windows of consecutive sentences
  that fit (a window takes at least two sentences; a trailing lone sentence is dropped).
  Each window with at least two sentences gives one example.
- n. Drawn uniformly from 1..min(m, sentences in the window, what the budget allows), so
  the labels are not dominated by n=1 (label 0); the split points are then drawn
  uniformly among the sentence gaps, and the permutation uniformly among all n! orders
  (the identity included: it is a class of its own).
- ``perm``. ``perm[k]`` is the ORIGINAL index of the segment SHOWN at position k; e.g. for
  segments (A, B, C) shown as (C, A, B), perm = (2, 0, 1). The label of a permutation of n
  segments is sum_{i=1..n-1} i! plus its rank among the n! permutations of range(n) in
  lexicographic order: n=1 -> 0; n=2: (0, 1) -> 1, (1, 0) -> 2; n=3: (0, 1, 2) -> 3.
- Input. ``[CLS] seg_perm[0] [SEP] seg_perm[1] [SEP] ... [SEP]``: the shown segments joined
  with [SEP] after each, token types alternating 0/1 per segment. Without separators n
  would not be observable and different (n, permutation) pairs could give the same text.
- Length. When the segments do not fit in ``max_seq_length`` they are truncated
  proportionally to their lengths (the end of each is cut), never below one token.

Documents without a paragraph of two (non-empty) sentences are skipped
("no_paragraph_with_two_sentences").
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pretrain_tasks.base import (
    CorpusView,
    SentenceClassification,
    SkipDocument,
)
from pretrain_tasks.document import Document
from pretrain_tasks.encoding import encode_texts
from schedules import options

LABEL_COLUMN = "sentence_reordering_label"

# ---------------------------------------------------------------- the permutation codec


def label_offset(num_segments: int) -> int:
    """First label of permutations of ``num_segments`` segments: sum_{i=1..n-1} i!."""
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    return sum(math.factorial(i) for i in range(1, num_segments))


def num_classes(max_segments: int) -> int:
    """Number of labels for 1..m segments: sum_{n=1..m} n! (m=3: 9, m=5: 153)."""
    return label_offset(max_segments + 1)


def permutation_to_label(perm: Sequence[int]) -> int:
    """Label of ``perm`` (perm[k] = original index of the segment shown at position k)."""
    n = len(perm)
    if n < 1 or sorted(perm) != list(range(n)):
        raise ValueError(f"not a permutation of range(n): {tuple(perm)}")
    rank, remaining = 0, sorted(perm)
    for position, value in enumerate(perm):  # Lehmer code, lexicographic rank
        index = remaining.index(value)
        rank += index * math.factorial(n - 1 - position)
        remaining.pop(index)
    return label_offset(n) + rank


def label_to_permutation(label: int, max_segments: int) -> tuple[int, ...]:
    """Inverse of ``permutation_to_label`` for labels in ``range(num_classes(max_segments))``."""
    if not 0 <= label < num_classes(max_segments):
        raise ValueError(f"label {label} out of range for max_segments={max_segments}")
    n = 1
    while label >= label_offset(n + 1):
        n += 1
    rank, remaining, perm = label - label_offset(n), list(range(n)), []
    for position in range(n):
        index, rank = divmod(rank, math.factorial(n - 1 - position))
        perm.append(remaining.pop(index))
    return tuple(perm)


# ---------------------------------------------------------------- seeded helpers


def sentence_windows(lengths: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """[start, end) runs of consecutive sentences with >= 2 sentences, filled up to ``budget``.

    A window always takes a second sentence (truncation makes it fit); a trailing window
    of one sentence is dropped.
    """
    windows, start, count = [], 0, len(lengths)
    while start < count:
        end, total = start + 1, lengths[start]
        while end < count and (end - start < 2 or total + lengths[end] <= budget):
            total += lengths[end]
            end += 1
        if end - start >= 2:
            windows.append((start, end))
        start = end
    return windows


def split_segments(count: int, num_segments: int, rng: random.Random) -> list[tuple[int, int]]:
    """Cut ``count`` units into ``num_segments`` non-empty [start, end) runs at random gaps."""
    cuts = sorted(rng.sample(range(1, count), num_segments - 1))
    bounds = [0, *cuts, count]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def fit_lengths(lengths: Sequence[int], budget: int) -> list[int]:
    """Proportional truncation: lengths summing to at most ``budget``, each >= 1."""
    if len(lengths) > budget or min(lengths, default=1) < 1:
        raise ValueError(f"cannot fit {list(lengths)} into {budget} tokens")
    total = sum(lengths)
    if total <= budget:
        return list(lengths)
    kept = [max(1, budget * length // total) for length in lengths]
    while sum(kept) > budget:  # the minimum of 1 can overshoot: trim the longest
        kept[kept.index(max(kept))] -= 1
    while sum(kept) < budget:  # rounding down leaves room: give it to the most truncated
        cut = [length - k for length, k in zip(lengths, kept, strict=True)]
        kept[cut.index(max(cut))] += 1
    return kept


def draw_reordering(
    window_lengths: Sequence[int], max_segments: int, rng: random.Random
) -> tuple[list[tuple[int, int]], tuple[int, ...]]:
    """Segments (sentence runs of the window) and the shown order ``perm`` for one example."""
    count = len(window_lengths)
    num_segments = rng.randint(1, min(max_segments, count))
    segments = split_segments(count, num_segments, rng)
    perm = list(range(num_segments))
    rng.shuffle(perm)
    return segments, tuple(perm)


def assemble(
    segments: Sequence[tuple[list[int], list[int]]],
    perm: Sequence[int],
    cls_id: int,
    sep_id: int,
    max_length: int,
) -> dict[str, list[int]]:
    """``[CLS] seg [SEP] seg [SEP] ...`` in shown order; types alternate per shown segment.

    ``segments`` holds (token ids, word starts) per ORIGINAL segment.
    """
    shown = [segments[original] for original in perm]
    kept = fit_lengths([len(ids) for ids, _ in shown], max_length - 1 - len(shown))
    input_ids, token_type_ids, word_starts = [cls_id], [0], [0]
    for position, ((ids, starts), keep) in enumerate(zip(shown, kept, strict=True)):
        input_ids += [*ids[:keep], sep_id]
        token_type_ids += [position % 2] * (keep + 1)
        word_starts += [*starts[:keep], 0]
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "word_starts": word_starts}


# ---------------------------------------------------------------- the task


@dataclass(frozen=True)
class SentenceReorderingSettings(options.Settings):
    """Options of the ``sentence_reordering`` task."""

    max_segments: int = options.bounded(3, low=1, high=8)
    max_examples_per_document: int = options.bounded(64, low=1)


class SentenceReorderingTask(SentenceClassification):
    """Classify the permutation applied to the segments of a paragraph."""

    name: ClassVar[str] = "sentence_reordering"
    family: ClassVar[str] = "structure-aware"
    level: ClassVar[str] = "sentence"
    Settings: ClassVar[type] = SentenceReorderingSettings
    label_column: ClassVar[str] = LABEL_COLUMN

    def __init__(
        self, settings: SentenceReorderingSettings, tokenizer: Any, max_seq_length: int
    ) -> None:
        if max_seq_length < 3:
            raise ValueError("sentence_reordering needs max_seq_length >= 3")
        self.settings = settings
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.num_labels = num_classes(settings.max_segments)
        # [CLS] + one [SEP] and at least one token per segment must fit
        self.usable_segments = min(settings.max_segments, (max_seq_length - 1) // 2)

    def build_examples(
        self, document: Document, corpus: CorpusView, rng: random.Random
    ) -> list[dict[str, Any]]:
        """One shuffled window of consecutive sentences per paragraph window."""
        budget = self.max_seq_length - 1 - self.usable_segments
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        examples = []
        for paragraph in document.paragraphs:
            if len(paragraph.sentences) < 2:
                continue
            units = [
                (encoded.ids, encoded.word_starts)
                for encoded in encode_texts(self.tokenizer, paragraph.sentences, offsets=False)
                if encoded.ids  # a sentence with no tokens would make an empty segment
            ]
            for start, end in sentence_windows([len(ids) for ids, _ in units], budget):
                window = units[start:end]
                segments, perm = draw_reordering(
                    [len(ids) for ids, _ in window], self.usable_segments, rng
                )
                joined = [
                    (
                        [t for ids, _ in window[a:b] for t in ids],
                        [s for _, starts in window[a:b] for s in starts],
                    )
                    for a, b in segments
                ]
                example = assemble(joined, perm, cls_id, sep_id, self.max_seq_length)
                examples.append({**example, LABEL_COLUMN: permutation_to_label(perm)})
        if not examples:
            raise SkipDocument("no_paragraph_with_two_sentences")
        limit = self.settings.max_examples_per_document
        if len(examples) > limit:
            examples = [examples[i] for i in sorted(rng.sample(range(len(examples)), limit))]
        return examples

    def label_counts(self, columns: Mapping[str, Sequence[Any]]) -> dict[str, int]:
        """Examples per segment count (``segments=n``) and per observed order (``order=201``)."""
        m = self.settings.max_segments
        counts = {f"segments={n}": 0 for n in range(1, m + 1)}
        by_label = Counter(int(label) for label in columns[LABEL_COLUMN])
        for label in sorted(by_label):
            perm = label_to_permutation(label, m)
            counts[f"segments={len(perm)}"] += by_label[label]
            counts["order=" + "".join(map(str, perm))] = by_label[label]
        return counts
