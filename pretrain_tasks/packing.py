"""Turning sentences into the shared example columns: [CLS] ... [SEP] segments.

Every task's examples carry ``input_ids``, ``token_type_ids`` and ``word_starts`` (1 on the
first sub-token of each word, 0 elsewhere and on special tokens). ``pack_sentences`` packs
consecutive sentences; ``pack_sentences_with_offsets`` gives the same segments plus where
each token came from (sentence, character span), for tasks that label words of the
original text; ``encode_pair`` encodes one segment or a sentence pair. Texts are tokenized
through ``encoding.encode_texts`` (once per process for texts seen recently).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pretrain_tasks.encoding import encode_texts, encoder_for, pair_lengths, word_starts_from

PACKED_MEMO = 8  # pack_sentences_with_offsets results remembered per tokenizer

__all__ = [
    "PackedSegment",
    "encode_pair",
    "pack_sentences",
    "pack_sentences_with_offsets",
    "word_starts_from",
]


def encode_pair(
    tokenizer: Any, first: str, second: str | None, max_length: int
) -> dict[str, list[int]]:
    """One segment ``[CLS] A [SEP]`` or a pair ``[CLS] A [SEP] B [SEP]``, truncated as
    ``tokenizer(first, second, truncation="longest_first", max_length=max_length)`` does (an
    empty ``second`` is no pair, as there); each text's tokens come from the shared memo."""
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if not second:
        (a,) = encode_texts(tokenizer, [first], offsets=False)
        keep = max(0, max_length - 2)
        return _segment(list(a.ids[:keep]), list(a.word_starts[:keep]), cls_id, sep_id)
    a, b = encode_texts(tokenizer, [first, second], offsets=False)
    keep_a, keep_b = pair_lengths(len(a.ids), len(b.ids), max(0, max_length - 3))
    return {
        "input_ids": [cls_id, *a.ids[:keep_a], sep_id, *b.ids[:keep_b], sep_id],
        "token_type_ids": [0] * (keep_a + 2) + [1] * (keep_b + 1),
        "word_starts": [0, *a.word_starts[:keep_a], 0, *b.word_starts[:keep_b], 0],
    }


def pack_sentences(
    tokenizer: Any, sentences: Sequence[str], max_length: int
) -> list[dict[str, list[int]]]:
    """Pack consecutive sentences into [CLS] ... [SEP] segments of at most ``max_length``.

    Sentences longer than the room are cut; a segment never splits a sentence unless the
    sentence alone is too long.
    """
    room = max_length - 2
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    segments: list[dict[str, list[int]]] = []
    ids: list[int] = []
    starts: list[int] = []
    for encoded in encode_texts(tokenizer, sentences, offsets=False):
        s_ids = encoded.ids[:room]
        if ids and len(ids) + len(s_ids) > room:
            segments.append(_segment(ids, starts, cls_id, sep_id))
            ids, starts = [], []
        ids += s_ids
        starts += encoded.word_starts[:room]
    if ids:
        segments.append(_segment(ids, starts, cls_id, sep_id))
    return segments


def _segment(ids: list[int], starts: list[int], cls_id: int, sep_id: int) -> dict[str, list[int]]:
    return {
        "input_ids": [cls_id, *ids, sep_id],
        "token_type_ids": [0] * (len(ids) + 2),
        "word_starts": [0, *starts, 0],
    }


@dataclass(frozen=True)
class PackedSegment:
    """A packed [CLS] ... [SEP] segment that remembers where each token came from."""

    input_ids: list[int]
    word_starts: list[int]
    sentence_index: list[int]  # per token: index of its sentence, -1 on [CLS]/[SEP]
    offsets: list[tuple[int, int]]  # per token: character span in its sentence

    def shared_columns(self) -> dict[str, list[int]]:
        """The columns every example has."""
        return {
            "input_ids": list(self.input_ids),
            "token_type_ids": [0] * len(self.input_ids),
            "word_starts": list(self.word_starts),
        }

    def word_numbers(self) -> list[int]:
        """Per token: 1-based number of its word in the segment, 0 on special tokens."""
        if "_word_numbers" in self.__dict__:  # computed once: several tasks ask
            return self.__dict__["_word_numbers"]
        numbers = [
            number if sentence >= 0 else 0
            for number, sentence in zip(
                itertools.accumulate(self.word_starts), self.sentence_index, strict=True
            )
        ]
        self.__dict__["_word_numbers"] = numbers
        return numbers

    def words(self) -> list[tuple[int, int, int, int]]:
        """(first token position, sentence index, start, end) of every word, in order."""
        if "_words" in self.__dict__:  # computed once: several tasks ask
            return self.__dict__["_words"]
        sources, offsets = self.sentence_index, self.offsets
        firsts = list(itertools.compress(range(len(self.word_starts)), self.word_starts))
        lasts = [first - 1 for first in firsts[1:]]
        lasts.append(len(self.word_starts) - 1)
        # A word's last token is the one before the next word's first, unless that one
        # belongs elsewhere ([SEP]): then ``_last_token`` walks back to it.
        words = [
            (first, sources[first], offsets[first][0], offsets[last][1])
            for first, last in zip(firsts, lasts, strict=True)
            for last in [last if sources[last] == sources[first] else self._last_token(first, last)]
        ]
        self.__dict__["_words"] = words
        return words

    def _last_token(self, first: int, last: int) -> int:
        """The last position in ``first..last`` of ``first``'s sentence."""
        sentence = self.sentence_index[first]
        while last > first and self.sentence_index[last] != sentence:
            last -= 1
        return last


def pack_sentences_with_offsets(
    tokenizer: Any, sentences: Sequence[str], max_length: int
) -> list[PackedSegment]:
    """``pack_sentences`` (same segments, same ids) plus each token's source offsets.

    The last few results are remembered (segments are immutable): the word-aware tasks
    pack the same sentences of a document alike.
    """
    if not sentences:
        return []
    memo = encoder_for(tokenizer).packed
    key = (max_length, tuple(sentences))
    if key not in memo:
        if len(memo) >= PACKED_MEMO:
            memo.popitem(last=False)
        memo[key] = _pack_with_offsets(tokenizer, sentences, max_length)
    return memo[key]


def _pack_with_offsets(
    tokenizer: Any, sentences: Sequence[str], max_length: int
) -> list[PackedSegment]:
    room = max_length - 2
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    segments: list[PackedSegment] = []
    ids: list[int] = []
    starts: list[int] = []
    sources: list[int] = []
    offsets: list[tuple[int, int]] = []

    def close() -> None:
        segments.append(
            PackedSegment(
                [cls_id, *ids, sep_id],
                [0, *starts, 0],
                [-1, *sources, -1],
                [(0, 0), *offsets, (0, 0)],
            )
        )

    for i, encoded in enumerate(encode_texts(tokenizer, sentences)):
        s_ids = encoded.ids[:room]
        if ids and len(ids) + len(s_ids) > room:
            close()
            ids, starts, sources, offsets = [], [], [], []
        ids += s_ids
        starts += encoded.word_starts[:room]
        sources += [i] * len(s_ids)
        offsets += encoded.offsets[:room]
    if ids:
        close()
    return segments
