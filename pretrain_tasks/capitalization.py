"""Capitalization prediction: was this word capitalised in the original text (ERNIE 2.0, 4.2.1).

ERNIE 2.0 (Sun et al. 2020, arXiv 1907.12412, section 4.2.1) predicts, from lower-cased
input, whether each word was capitalised: capitalised words usually carry meaning
(names, entities) an uncased model otherwise cannot see. With a cased tokenizer the input
itself gives the answer away, so the task refuses to be built with one.

Examples are packed runs of consecutive sentences, exactly as in ``mlm``. Labels come from
the original (cased) sentences through the fast tokenizer's offset mapping: the first
sub-token of each word carries 1 if the word's first character is an upper-case letter and
0 if it is a lower-case letter; words that do not start with a cased letter (numbers,
punctuation, uncased scripts), continuation sub-tokens and special tokens carry
IGNORE_INDEX. ``ignore_sentence_initial`` also leaves out each sentence's first word, whose
capital only marks the sentence start. The head is a 2-way token classifier over labelled
positions; metrics are accuracy and precision/recall/F1 of the "capitalised" class.

The binary token head, loss and metrics come from ``base.BinaryTokenClassification``
(shared with ``token_document_relation``); segments from ``packing``.
"""

from __future__ import annotations

import random
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
from schedules import options

LABELS = "capitalization_labels"
LOWERCASE, CAPITALISED = 0, 1

# ---------------------------------------------------------------- label builders (prepare time)


def tokenizer_lowercases(tokenizer: Any) -> bool:
    """True when the tokenizer maps upper- and lower-case text to the same tokens."""
    probe = "Hello World ABC Capitalization"
    cased = tokenizer(probe, add_special_tokens=False)["input_ids"]
    return cased == tokenizer(probe.lower(), add_special_tokens=False)["input_ids"]


def capital_label(word_text: str) -> int:
    """1 if ``word_text`` starts with an upper-case letter, 0 lower-case, else IGNORE_INDEX."""
    if not word_text:
        return IGNORE_INDEX
    first = word_text[0]
    if first.isupper():
        return CAPITALISED
    if first.islower():
        return LOWERCASE
    return IGNORE_INDEX


def capitalization_labels(
    segment: PackedSegment, sentences: Sequence[str], ignore_sentence_initial: bool = False
) -> list[int]:
    """Per token of ``segment``: the capital label on each word's first sub-token."""
    labels = [IGNORE_INDEX] * len(segment.input_ids)
    previous_sentence = -1
    for position, sentence, start, end in segment.words():
        initial = sentence != previous_sentence
        previous_sentence = sentence
        if ignore_sentence_initial and initial:
            continue
        labels[position] = capital_label(sentences[sentence][start:end])
    return labels


# ---------------------------------------------------------------- the task


@dataclass(frozen=True)
class CapitalizationSettings(options.Settings):
    """Options of the ``capitalization`` task."""

    # Leave each sentence's first word unlabelled (its capital only marks the sentence start).
    ignore_sentence_initial: bool = False


class CapitalizationTask(BinaryTokenClassification):
    """Predict from uncased input whether each word was capitalised."""

    name: ClassVar[str] = "capitalization"
    family: ClassVar[str] = "word-aware"
    level: ClassVar[str] = "token"
    Settings: ClassVar[type] = CapitalizationSettings
    label_names: ClassVar[tuple[str, str]] = ("lowercase", "capitalised")

    def __init__(
        self, settings: CapitalizationSettings, tokenizer: Any, max_seq_length: int
    ) -> None:
        if not tokenizer_lowercases(tokenizer):
            raise ValueError(
                "capitalization needs an uncased (lower-casing) tokenizer: with a cased one "
                "the input already shows the capitals; use tokenizer.lowercase: true or an "
                "uncased checkpoint's tokenizer"
            )
        self.settings = settings
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length

    def example_columns(self) -> dict[str, str]:
        """One label per token (IGNORE_INDEX where there is none)."""
        return {LABELS: "int_list"}

    def build_examples(
        self, document: Document, corpus: CorpusView, rng: random.Random
    ) -> list[dict[str, Any]]:
        """Packed runs of consecutive sentences with their capital labels."""
        sentences = document.sentences()
        if not sentences:
            raise SkipDocument("no_sentences")
        return [
            {
                **segment.shared_columns(),
                LABELS: capitalization_labels(
                    segment, sentences, self.settings.ignore_sentence_initial
                ),
            }
            for segment in pack_sentences_with_offsets(
                self.tokenizer, sentences, self.max_seq_length
            )
        ]
