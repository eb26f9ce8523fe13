"""Sentence distance: a 3-class relation between two sentences (ERNIE 2.0, section 4.2.2).

Label 0: the second sentence directly follows the first in the same document; 1: same
document, not adjacent; 2: a sentence of a different document. For each anchor sentence
the class is drawn uniformly among the classes the document allows (1 needs at least three
sentences, 2 needs another document), so classes stay balanced where the corpus allows it
and the data report shows any imbalance. Documents with fewer than two sentences are
skipped ("fewer_than_two_sentences"). A "different document" sentence is never drawn from
the anchor's own document.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pretrain_tasks.base import (
    CorpusView,
    SentenceClassification,
    SkipDocument,
)
from pretrain_tasks.document import Document
from pretrain_tasks.packing import encode_pair
from schedules import options

ADJACENT, SAME_DOCUMENT, OTHER_DOCUMENT = 0, 1, 2
LABEL_NAMES = ("adjacent", "same_document", "other_document")


def distant_index(anchor: int, count: int, rng: random.Random) -> int:
    """A sentence index of the same document that is neither ``anchor`` nor adjacent to it."""
    candidates = [j for j in range(count) if abs(j - anchor) > 1]
    return rng.choice(candidates)


def draw_pairs(
    sentences: Sequence[str],
    document_id: str,
    corpus: CorpusView,
    rng: random.Random,
    max_pairs: int,
) -> list[tuple[str, str, int]]:
    """(first, second, label) triples, one per anchor sentence, classes drawn uniformly."""
    count = len(sentences)
    pairs = []
    anchors = list(range(count - 1))
    rng.shuffle(anchors)
    for anchor in sorted(anchors[:max_pairs]):
        feasible = [ADJACENT] + ([SAME_DOCUMENT] if count >= 3 else [])
        other = corpus.random_sentence(rng, exclude_document=document_id)
        if other is not None:
            feasible.append(OTHER_DOCUMENT)
        label = rng.choice(feasible)
        if label == ADJACENT:
            second = sentences[anchor + 1]
        elif label == SAME_DOCUMENT:
            second = sentences[distant_index(anchor, count, rng)]
        else:
            second = other
        pairs.append((sentences[anchor], second, label))
    return pairs


@dataclass(frozen=True)
class SentenceDistanceSettings(options.Settings):
    """Options of the ``sentence_distance`` task."""

    max_pairs_per_document: int = options.bounded(64, low=1)


class SentenceDistanceTask(SentenceClassification):
    """Classify a sentence pair as adjacent / same document / different documents."""

    name: ClassVar[str] = "sentence_distance"
    family: ClassVar[str] = "structure-aware"
    level: ClassVar[str] = "sentence"
    Settings: ClassVar[type] = SentenceDistanceSettings
    label_column: ClassVar[str] = "sentence_distance_label"
    label_names = LABEL_NAMES
    num_labels = 3

    def __init__(
        self, settings: SentenceDistanceSettings, tokenizer: Any, max_seq_length: int
    ) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length

    def build_examples(
        self, document: Document, corpus: CorpusView, rng: random.Random
    ) -> list[dict[str, Any]]:
        """One pair per anchor sentence (up to ``max_pairs_per_document``)."""
        sentences = document.sentences()
        if len(sentences) < 2:
            raise SkipDocument("fewer_than_two_sentences")
        pairs = draw_pairs(
            sentences, document.id, corpus, rng, self.settings.max_pairs_per_document
        )
        return [
            {**encode_pair(self.tokenizer, a, b, self.max_seq_length), "sentence_distance_label": y}
            for a, b, y in pairs
        ]
