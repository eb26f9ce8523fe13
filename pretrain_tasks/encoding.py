"""Tokenize each text once: a bounded memo over the fast tokenizer's Rust backend.

Every built-in task turns text into token ids through ``encode_texts`` (directly, or through
``packing.pack_sentences``, ``pack_sentences_with_offsets`` and ``encode_pair``). The
``TextEncoder`` behind it calls the backend's ``encode_batch`` once for the texts of a call
that it has not seen recently and keeps (ids, word starts, character offsets) of each in a
first-in-first-out memo of ``MEMO_TEXTS`` texts. Preparation builds every task's examples
of a document one task after another, so a document's sentences are tokenized once, not
once per task (eight times with the eight tasks), and the transformers wrapper's
per-call work is skipped.

Results equal the transformers tokenizer's own, ``tokenizer(texts, add_special_tokens=
False, return_offsets_mapping=True)``: the encoder uses a copy of the same backend with
truncation and padding switched off (a ``tokenizer.json`` may carry either), and the tests
compare both on the built-in sample and on awkward text. ``pair_lengths`` reproduces the
backend's ``longest_first`` pair truncation, so ``encode_pair`` needs no second call.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Texts kept per tokenizer: a document's sentences (and the few "other document" sentences
# drawn for it) many times over; about 10 MB at 25 tokens a sentence.
MEMO_TEXTS = 8192


@dataclass(frozen=True, slots=True)
class EncodedText:
    """One text's tokens, without special tokens."""

    ids: tuple[int, ...]
    word_starts: tuple[int, ...]  # 1 on the first sub-token of each word
    offsets: tuple[tuple[int, int], ...]  # character span of each token in the text


def word_starts_from(word_ids: Sequence[int | None]) -> list[int]:
    """1 where a token starts a new word, 0 on continuation and special tokens."""
    # one comprehension over (word, previous word): 2.2x the speed of an append loop
    return [
        0 if word is None or word == previous else 1
        for word, previous in zip(word_ids, [None, *word_ids], strict=False)  # one longer
    ]


class TextEncoder:
    """A fast tokenizer's backend plus a FIFO memo of recently encoded texts."""

    def __init__(self, tokenizer: Any, capacity: int = MEMO_TEXTS) -> None:
        from tokenizers import Tokenizer

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError("a fast (Rust-backed) Hugging Face tokenizer is required")
        self.backend = Tokenizer.from_str(backend.to_str())
        self.backend.no_truncation()
        self.backend.no_padding()
        self.capacity = max(1, capacity)
        # OrderedDict: popitem(last=False) is O(1); deleting a dict's first key is not (the
        # next lookup of the first key skips every slot deleted before it: 8x slower here)
        self.memo: OrderedDict[str, EncodedText] = OrderedDict()
        self.packed: OrderedDict[Any, Any] = OrderedDict()  # recent packings (``packing``)
        self.encoded = 0  # texts sent to the backend (the rest came from the memo)

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        """Each text's encoding, in order; texts not in the memo go to the backend in one batch."""
        found = {text: self.memo[text] for text in texts if text in self.memo}
        missing = [text for text in dict.fromkeys(texts) if text not in found]
        if missing:
            self.encoded += len(missing)
            batch = self.backend.encode_batch(missing, add_special_tokens=False)
            for text, encoding in zip(missing, batch, strict=True):
                found[text] = EncodedText(
                    tuple(encoding.ids),
                    tuple(word_starts_from(encoding.word_ids)),
                    tuple(encoding.offsets),
                )
                self._remember(text, found[text])
        return [found[text] for text in texts]

    def _remember(self, text: str, encoded: EncodedText) -> None:
        if len(self.memo) >= self.capacity:
            self.memo.popitem(last=False)
        self.memo[text] = encoded


_ENCODERS: weakref.WeakKeyDictionary[Any, TextEncoder] = weakref.WeakKeyDictionary()


def encoder_for(tokenizer: Any) -> TextEncoder:
    """This process's ``TextEncoder`` of ``tokenizer`` (made on first use, dropped with it)."""
    encoder = _ENCODERS.get(tokenizer)
    if encoder is None:
        encoder = _ENCODERS[tokenizer] = TextEncoder(tokenizer)
    return encoder


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[EncodedText]:
    """Each text's tokens without special tokens, as ``tokenizer(texts,
    add_special_tokens=False, return_offsets_mapping=True)`` gives them, through the memo."""
    return encoder_for(tokenizer).encode(texts)


def pair_lengths(first: int, second: int, room: int) -> tuple[int, int]:
    """Tokens kept of a pair of ``first`` and ``second`` tokens under ``longest_first``
    truncation to ``room`` tokens (the backend's rule: the shorter text is kept whole when
    the longer one can take the rest, otherwise each gets half, the odd token going to the
    longer one, or to the second when they are equally long)."""
    if first + second <= room:
        return first, second
    short, long = sorted((first, second))
    swapped = first > second
    long = short if short > room else max(short, room - short)
    if short + long > room:
        short = room // 2
        long = short + room % 2
    return (long, short) if swapped else (short, long)
