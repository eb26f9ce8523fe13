"""Turning sentences into the shared example columns: [CLS] ... [SEP] segments.

Every task's examples carry ``input_ids``, ``token_type_ids`` and ``word_starts`` (1 on the
first sub-token of each word, 0 elsewhere and on special tokens). ``pack_sentences`` packs
consecutive sentences; ``pack_sentences_with_offsets`` gives the same segments plus where
each token came from (sentence, character span), for tasks that label words of the
original text; ``encode_pair`` encodes one segment or a sentence pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def word_starts_from(word_ids: Sequence[int | None]) -> list[int]:
    """1 where a token starts a new word, 0 on continuation and special tokens."""
    out, previous = [], None
    for word in word_ids:
        out.append(int(word is not None and word != previous))
        previous = word
    return out


def encode_pair(
    tokenizer: Any, first: str, second: str | None, max_length: int
) -> dict[str, list[int]]:
    """Tokenize one segment or a pair with [CLS]/[SEP], truncating the longest first."""
    enc = tokenizer(
        first,
        second,
        truncation="longest_first" if second is not None else True,
        max_length=max_length,
        return_token_type_ids=True,
    )
    starts = word_starts_from(enc.word_ids())
    if second is not None:  # word ids restart in segment B: mark its first word too
        seq_ids = enc.sequence_ids()
        starts = [
            int(s or (seq_ids[i] == 1 and seq_ids[i - 1] != 1 and enc.word_ids()[i] is not None))
            for i, s in enumerate(starts)
        ]
    return {
        "input_ids": enc["input_ids"],
        "token_type_ids": enc["token_type_ids"],
        "word_starts": starts,
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
    encodings = tokenizer(list(sentences), add_special_tokens=False)
    segments: list[dict[str, list[int]]] = []
    ids: list[int] = []
    starts: list[int] = []
    for i in range(len(sentences)):
        s_ids = encodings["input_ids"][i][:room]
        s_starts = word_starts_from(encodings.word_ids(i))[:room]
        if ids and len(ids) + len(s_ids) > room:
            segments.append(_segment(ids, starts, cls_id, sep_id))
            ids, starts = [], []
        ids += s_ids
        starts += s_starts
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
        numbers, current = [], 0
        for start, sentence in zip(self.word_starts, self.sentence_index, strict=True):
            current += start
            numbers.append(current if sentence >= 0 else 0)
        return numbers

    def words(self) -> list[tuple[int, int, int, int]]:
        """(first token position, sentence index, start, end) of every word, in order."""
        out: list[list[int]] = []
        for position, (start, sentence) in enumerate(
            zip(self.word_starts, self.sentence_index, strict=True)
        ):
            if start:
                out.append([position, sentence, *self.offsets[position]])
            elif sentence >= 0 and out and out[-1][1] == sentence:
                out[-1][3] = self.offsets[position][1]
        return [(p, s, a, b) for p, s, a, b in out]


def pack_sentences_with_offsets(
    tokenizer: Any, sentences: Sequence[str], max_length: int
) -> list[PackedSegment]:
    """``base.pack_sentences`` (same segments, same ids) plus each token's source offsets."""
    if not sentences:
        return []
    room = max_length - 2
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    encodings = tokenizer(list(sentences), add_special_tokens=False, return_offsets_mapping=True)
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

    for i in range(len(sentences)):
        s_ids = encodings["input_ids"][i][:room]
        if ids and len(ids) + len(s_ids) > room:
            close()
            ids, starts, sources, offsets = [], [], [], []
        ids += s_ids
        starts += word_starts_from(encodings.word_ids(i))[:room]
        sources += [i] * len(s_ids)
        offsets += [tuple(o) for o in encodings["offset_mapping"][i][:room]]
    if ids:
        close()
    return segments
