"""Token-document relation: does this word also appear in other segments of the document
(ERNIE 2.0, arXiv 1907.12412, section 4.2.1).

The paper predicts, for each token of a segment, whether it appears in other segments of the
same document: words spread over a document tend to be its key words (or common words). The
paper leaves segments and filtering unspecified; here:

- segment: a paragraph (``segment_by: paragraph``, the default), packed into [CLS] ... [SEP]
  chunks of at most ``max_seq_length`` tokens like ``mlm``; a paragraph too long for one
  chunk gives several segments. ``segment_by: chunk`` packs the whole document instead (the
  ``mlm`` examples). Every segment is one example; a document with fewer than two segments
  is skipped ("single_segment"), one without sentences too ("no_sentences").
- word: a word of the tokenizer's pre-tokenizer; the label sits on its first sub-token,
  continuation sub-tokens and special tokens carry IGNORE_INDEX.
- normalisation: the word's original text, accents stripped, case folded, punctuation and
  symbol characters removed ("Paris" = "paris", "naïve" = "naive").
- label: 1 if the normalised word occurs in at least one other segment of the document,
  0 otherwise. Words without a letter (punctuation, numbers) carry IGNORE_INDEX, and so do
  stop words (a small built-in English list, ``spans.STOP_WORDS``) unless
  ``ignore_stop_words`` is false: they appear everywhere and would teach nothing.

The head is a 2-way token classifier; metrics are accuracy and precision/recall/F1 of
"appears elsewhere".
"""

from __future__ import annotations

import functools
import random
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pretrain_tasks.base import (
    IGNORE_INDEX,
    BinaryTokenClassification,
    CorpusView,
    SkipDocument,
)
from pretrain_tasks.document import Document
from pretrain_tasks.packing import PackedSegment, pack_sentences_with_offsets
from pretrain_tasks.spans import STOP_WORDS
from schedules import options

LABELS = "token_document_relation_labels"
SEGMENT_KINDS = ("paragraph", "chunk")

# ---------------------------------------------------------------- label builders (prepare time)


@functools.lru_cache(maxsize=1 << 16)
def normalise_word(text: str) -> str:
    """Accents stripped, case folded, punctuation and symbols removed: "Naïve!" -> "naive"."""
    if text.isascii():  # the same rule: ASCII letters and digits are the only L/N characters
        return "".join(ch for ch in text if ch.isalnum()).lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(
        ch
        for ch in decomposed
        if not unicodedata.category(ch).startswith(("M", "P", "S", "Z", "C"))
    ).casefold()


def is_labelled_word(word: str, ignore_stop_words: bool = True) -> bool:
    """Whether a normalised word gets a label: it has a letter and is not an ignored stop word."""
    has_letter = any(ch.isalpha() for ch in word)
    return has_letter and not (ignore_stop_words and word in STOP_WORDS)


def relation_labels(
    segment_words: Sequence[Sequence[str]], ignore_stop_words: bool = True
) -> list[list[int]]:
    """Per segment, per (normalised) word: 1 if it occurs in another segment, 0 if not,
    IGNORE_INDEX for words without a letter or (optionally) stop words."""
    segments_with = Counter(word for words in segment_words for word in set(words))
    label_of = {  # one decision per distinct word of the document
        word: int(count > 1) if is_labelled_word(word, ignore_stop_words) else IGNORE_INDEX
        for word, count in segments_with.items()
    }
    return [[label_of[word] for word in words] for words in segment_words]


def segment_word_texts(segment: PackedSegment, sentences: Sequence[str]) -> list[str]:
    """The normalised text of every word of ``segment``, in order."""
    return [normalise_word(sentences[s][a:b]) for _, s, a, b in segment.words()]


def document_segments(
    tokenizer: Any, document: Document, max_length: int, segment_by: str
) -> list[tuple[PackedSegment, Sequence[str]]]:
    """(segment, the sentences its tokens index) for every segment of ``document``."""
    groups = (
        [list(p.sentences) for p in document.paragraphs]
        if segment_by == "paragraph"
        else [document.sentences()]
    )
    return [
        (segment, sentences)
        for sentences in groups
        for segment in pack_sentences_with_offsets(tokenizer, sentences, max_length)
    ]


def token_labels(segment: PackedSegment, word_labels: Sequence[int]) -> list[int]:
    """Word labels placed on each word's first sub-token; IGNORE_INDEX elsewhere."""
    labels = [IGNORE_INDEX] * len(segment.input_ids)
    for (position, _, _, _), label in zip(segment.words(), word_labels, strict=True):
        labels[position] = label
    return labels


# ---------------------------------------------------------------- the task


@dataclass(frozen=True)
class TokenDocumentRelationSettings(options.Settings):
    """Options of the ``token_document_relation`` task."""

    ignore_stop_words: bool = True
    segment_by: str = "paragraph"  # "paragraph" or "chunk"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.segment_by not in SEGMENT_KINDS:
            raise ValueError(f"segment_by must be one of {SEGMENT_KINDS}, got {self.segment_by!r}")


class TokenDocumentRelationTask(BinaryTokenClassification):
    """Predict whether each word of a segment also occurs in other segments of its document."""

    name: ClassVar[str] = "token_document_relation"
    family: ClassVar[str] = "word-aware"
    level: ClassVar[str] = "token"
    Settings: ClassVar[type] = TokenDocumentRelationSettings
    label_names: ClassVar[tuple[str, str]] = ("only_this_segment", "in_other_segments")

    def __init__(
        self, settings: TokenDocumentRelationSettings, tokenizer: Any, max_seq_length: int
    ) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length

    def example_columns(self) -> dict[str, str]:
        """One label per token (IGNORE_INDEX where there is none)."""
        return {LABELS: "int_list"}

    def build_examples(
        self, document: Document, corpus: CorpusView, rng: random.Random
    ) -> list[dict[str, Any]]:
        """One example per segment, labelled against the document's other segments."""
        if not document.num_sentences:
            raise SkipDocument("no_sentences")
        segments = document_segments(
            self.tokenizer, document, self.max_seq_length, self.settings.segment_by
        )
        if len(segments) < 2:
            raise SkipDocument("single_segment")
        words = [segment_word_texts(segment, sentences) for segment, sentences in segments]
        labels = relation_labels(words, self.settings.ignore_stop_words)
        return [
            {**segment.shared_columns(), LABELS: token_labels(segment, word_labels)}
            for (segment, _), word_labels in zip(segments, labels, strict=True)
        ]
