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
compare both on the built-in sample and on awkward text.

Character offsets cost the backend ~30% of its time (it tracks every normalisation
alignment) and their conversion to Python more. Callers that do not need them say so
(``offsets=False``: MLM packing, sentence pairs, reordering); while no caller of the process
has asked for offsets, a BERT-style tokenizer (a WordPiece model with a continuation prefix
under the BERT pre-tokenizer) is then run through ``encode_batch_fast`` and word starts are
read from the ids (a word starts on every token that is not a continuation piece: the BERT
pre-tokenizer splits every punctuation character off, so no word can begin with the
prefix). The first request for offsets switches the process's encoder to full encodings for
good (texts remembered without offsets are encoded again when asked for them), so a run of
word-aware tasks tokenizes each text once; other tokenizers always take the full path.

The BERT normalizer (clean control characters, space out CJK, strip accents, lower-case)
is ~40% of the backend's time, and on printable ASCII text (U+0020-U+007E: ~90% of English
Wikipedia's characters) all it does is lower-case (or nothing, when cased). Such texts go
to a copy of the backend without a normalizer, lower-cased in Python first when the
normalizer lower-cases: same ids, offsets and words (lower-casing ASCII keeps every
character's position), in ~55-65% of the time. A text containing the first character of an
added token (``[`` of ``[MASK]``) takes the normal path, since added tokens are matched
before or after normalising depending on their settings.

``pair_lengths`` reproduces the backend's ``longest_first`` pair truncation, so
``encode_pair`` needs no second call.
"""

from __future__ import annotations

import itertools
import re
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
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
    # character span of each token in the text; None when encoded without them
    offsets: tuple[tuple[int, int], ...] | None


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
        # per id: 1 if the token starts a word (BERT-style tokenizers only, else None)
        self.starts_word = word_start_table(self.backend)
        # full encodings (with offsets) for every text once any caller has wanted offsets
        self.offsets_wanted = self.starts_word is None
        # the backend without its BERT normalizer, for printable ASCII text (None: no such)
        self.plain: PlainRoute | None = PlainRoute.of(self.backend)

    def encode(self, texts: Sequence[str], offsets: bool = True) -> list[EncodedText]:
        """Each text's encoding, in order; texts not in the memo go to the backend in one
        batch. ``offsets=False``: the caller reads ids and word starts only (``offsets`` may
        then be None)."""
        self.offsets_wanted |= offsets
        memo = self.memo
        found = {
            text: memo[text]
            for text in texts
            if text in memo and (not offsets or memo[text].offsets is not None)
        }
        missing = [text for text in dict.fromkeys(texts) if text not in found]
        if missing:
            self.encoded += len(missing)
            encode = self._encode_full if self.offsets_wanted else self._encode_fast
            for text, encoded in zip(missing, encode(missing), strict=True):
                found[text] = encoded
                self._remember(text, encoded)
        return [found[text] for text in texts]

    def _encode_full(self, texts: list[str]) -> list[EncodedText]:
        batch = self._backend_encodings(texts, "encode_batch")
        if self.starts_word is None:
            return [
                EncodedText(
                    tuple(encoding.ids),
                    tuple(word_starts_from(encoding.word_ids)),
                    tuple(encoding.offsets),
                )
                for encoding in batch
            ]
        return self._starts_from_table(batch, offsets=True)  # BERT-style, as the fast path

    def _encode_fast(self, texts: list[str]) -> list[EncodedText]:
        return self._starts_from_table(self._backend_encodings(texts, "encode_batch_fast"))

    def _starts_from_table(self, batch: list[Any], offsets: bool = False) -> list[EncodedText]:
        """Encodings with word starts read from the ids (``starts_word``, no word ids), and
        character offsets when ``offsets``."""
        starts = self.starts_word
        assert starts is not None  # only chosen for tokenizers that have the table
        return [
            EncodedText(
                ids, tuple([starts[i] for i in ids]), tuple(encoding.offsets) if offsets else None
            )
            for encoding in batch
            for ids in [tuple(encoding.ids)]
        ]

    def _backend_encodings(self, texts: list[str], method: str) -> list[Any]:
        """The backend's ``method`` on ``texts`` (no special tokens), in order; printable
        ASCII texts through the normalizer-free copy when there is one."""

        def encode(backend: Any, batch: list[str]) -> list[Any]:
            return getattr(backend, method)(batch, add_special_tokens=False) if batch else []

        if self.plain is None:
            return encode(self.backend, texts)
        return self.plain.encode(texts, self.backend, encode)

    def _remember(self, text: str, encoded: EncodedText) -> None:
        self.memo.pop(text, None)  # an entry without offsets, encoded again with them
        if len(self.memo) >= self.capacity:
            self.memo.popitem(last=False)
        self.memo[text] = encoded


class PlainRoute:
    """Printable ASCII texts to a copy of a BERT-normalised backend without its normalizer.

    For such a text the ``BertNormalizer`` changes nothing but the case (no control
    characters, accents or CJK; the only whitespace is the space), and ASCII lower-casing
    keeps every character where it was: the copy, given ``text.lower()`` (or ``text`` when
    the normalizer keeps case), yields the same ids, offsets and word ids. Texts with a
    character that could begin an added token (either case) keep the normal path: the
    backend matches added tokens in the raw or the normalised text, by their settings.
    """

    def __init__(self, backend: Any, lowercase: bool, added_firsts: str) -> None:
        self.backend = backend
        self.lowercase = lowercase
        self.added = re.compile(f"[{re.escape(added_firsts)}]") if added_firsts else None
        self.texts = 0  # texts sent through the copy (the tests check the route is used)

    @classmethod
    def of(cls, backend: Any) -> PlainRoute | None:
        """The route for ``backend``, or None unless its normalizer is a ``BertNormalizer``."""
        from tokenizers import Tokenizer, normalizers

        normalizer = backend.normalizer
        if not isinstance(normalizer, normalizers.BertNormalizer):
            return None
        copy = Tokenizer.from_str(backend.to_str())
        copy.normalizer = None
        firsts = {
            variant
            for token in backend.get_added_tokens_decoder().values()
            if token.content
            for variant in (token.content[0], token.content[0].lower(), token.content[0].upper())
        }
        return cls(copy, bool(normalizer.lowercase), "".join(sorted(firsts)))

    def takes(self, text: str) -> bool:
        """Whether ``text`` may skip the normalizer."""
        return (
            text.isascii() and text.isprintable() and not (self.added and self.added.search(text))
        )

    def encode(
        self, texts: list[str], backend: Any, encode: Callable[[Any, list[str]], list[Any]]
    ) -> list[Any]:
        """``encode(backend, texts)``, the texts this route takes encoded by the copy."""
        plain = [self.takes(text) for text in texts]
        inputs = list(itertools.compress(texts, plain))
        if self.lowercase:
            inputs = [text.lower() for text in inputs]
        self.texts += len(inputs)
        if len(inputs) == len(texts):
            return encode(self.backend, inputs)
        rest = list(itertools.compress(texts, [not p for p in plain]))
        mine, others = iter(encode(self.backend, inputs)), iter(encode(backend, rest))
        return [next(mine) if p else next(others) for p in plain]


def word_start_table(backend: Any) -> bytes | None:
    """Per token id: 1 if the token starts a word, 0 if it is a continuation piece; None
    unless the backend is a WordPiece model with a continuation prefix under the BERT
    pre-tokenizer (there, and only there, the ids alone tell where words start) and has
    ``encode_batch_fast``."""
    from tokenizers import models, pre_tokenizers

    model = backend.model
    if not isinstance(model, models.WordPiece) or not model.continuing_subword_prefix:
        return None
    if not isinstance(backend.pre_tokenizer, pre_tokenizers.BertPreTokenizer):
        return None
    prefix = model.continuing_subword_prefix
    if not hasattr(backend, "encode_batch_fast"):  # a build without it (0.20.3 has it)
        return None
    vocab = backend.get_vocab(with_added_tokens=True)
    table = bytearray(max(vocab.values(), default=-1) + 1)
    for token, index in vocab.items():
        table[index] = 0 if token.startswith(prefix) else 1
    for index in backend.get_added_tokens_decoder():  # added tokens are words of their own
        table[index] = 1
    return bytes(table)


_ENCODERS: weakref.WeakKeyDictionary[Any, TextEncoder] = weakref.WeakKeyDictionary()


def encoder_for(tokenizer: Any) -> TextEncoder:
    """This process's ``TextEncoder`` of ``tokenizer`` (made on first use, dropped with it)."""
    encoder = _ENCODERS.get(tokenizer)
    if encoder is None:
        encoder = _ENCODERS[tokenizer] = TextEncoder(tokenizer)
    return encoder


def encode_texts(tokenizer: Any, texts: Sequence[str], offsets: bool = True) -> list[EncodedText]:
    """Each text's tokens without special tokens, as ``tokenizer(texts,
    add_special_tokens=False, return_offsets_mapping=True)`` gives them, through the memo
    (``offsets=False``: the caller does not read the offsets, which may then be None)."""
    return encoder_for(tokenizer).encode(texts, offsets)


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
