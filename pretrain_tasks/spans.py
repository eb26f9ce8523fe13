"""Words and character spans in raw sentences, and the token units spans become.

Prepare-time helpers shared by the word-aware tasks: the words of a sentence with their
offsets, runs of words not separated by punctuation, non-overlapping span selection, a
small English stop-word list, and ``units_from_spans``, which turns character spans into
per-token unit ids of a packed segment (0 = special token, k > 0 = unit).
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Iterable, Sequence

from pretrain_tasks.packing import PackedSegment

Span = tuple[int, int]  # character offsets [start, end) in one sentence

# A small English stop-word list (function words), shared by the word-aware tasks.
STOP_WORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers herself him himself his how i if in
    into is it its itself just me more most my myself no nor not now of off on once only or
    other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your
    yours yourself yourselves s t d ll m o re ve y also however therefore thus may might
    must shall many much
    """.split()
)
_WORD = re.compile(r"[^\W_]+")
_JOINING_GAP = re.compile(r"\s+|-")  # what may separate two words of one phrase or name


Word = tuple[str, int, int]  # (word, start, end)
# Sentences whose words are remembered: the word-aware tasks look at each sentence of a
# document several times (phrases, names, labels), one document at a time.
MEMO_SENTENCES = 8192


@functools.lru_cache(maxsize=MEMO_SENTENCES)
def words_with_offsets(text: str) -> tuple[Word, ...]:
    """(word, start, end) for every run of letters/digits in ``text``."""
    return tuple([(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)])


@functools.lru_cache(maxsize=MEMO_SENTENCES)
def word_runs(text: str) -> tuple[tuple[Word, ...], ...]:
    """Words grouped into runs separated only by whitespace or one hyphen (no punctuation)."""
    runs: list[list[Word]] = []
    for word in words_with_offsets(text):
        if runs:
            gap = text[runs[-1][-1][2] : word[1]]
            if gap == " " or _JOINING_GAP.fullmatch(gap):
                runs[-1].append(word)
                continue
        runs.append([word])
    return tuple(tuple(run) for run in runs)


@functools.lru_cache(maxsize=MEMO_SENTENCES)
def lowered_word_runs(text: str) -> tuple[tuple[str, ...], ...]:
    """``word_runs`` as lower-cased words only (phrase mining and matching read these)."""
    return tuple(tuple([word.lower() for word, _, _ in run]) for run in word_runs(text))


def select_non_overlapping(spans: Iterable[Span]) -> list[Span]:
    """Keep the longest spans first, then the leftmost, dropping any that overlap; sorted."""
    kept: list[Span] = []
    for start, end in sorted(set(spans), key=lambda s: (s[0] - s[1], s[0])):
        if end > start and all(end <= a or start >= b for a, b in kept):
            kept.append((start, end))
    return sorted(kept)


def units_from_spans(
    segment: PackedSegment, spans_per_sentence: Sequence[Sequence[Span]]
) -> tuple[list[int], int]:
    """(unit id per token, number of spans present) for one segmentation level.

    Every word touched by a span joins that span's unit; every other word is a unit by
    itself; special tokens get 0. Unit ids are numbered 1.. in reading order. Each
    sentence's spans are sorted and non-overlapping (as ``select_non_overlapping`` gives):
    a word then touches the first span its character range overlaps, the same one its
    first overlapping token touches, so words are matched (``segment.words()``, which the
    other word-aware tasks ask for too) rather than tokens.
    """
    word_of = segment.word_numbers()
    span_of_word = words_in_spans(segment.words(), spans_per_sentence)
    if not span_of_word:  # every word a unit of its own: units are the word numbers
        return list(word_of), 0
    # one unit id per word number (in reading order), then per token: 0 stays 0 (special)
    unit_of: dict[tuple[int, int], int] = {}
    unit_of_word = [0] + [
        unit_of.setdefault(span_of_word.get(word, (-1, word)), len(unit_of) + 1)
        for word in range(1, max(word_of) + 1)
    ]
    return [unit_of_word[word] for word in word_of], len(set(span_of_word.values()))


def words_in_spans(
    words: Sequence[tuple[int, int, int, int]], spans_per_sentence: Sequence[Sequence[Span]]
) -> dict[int, tuple[int, int]]:
    """1-based word number -> (sentence, k) of the first span ``k`` of its sentence that its
    characters overlap, for the words (``PackedSegment.words()``) some span touches.

    Per span, not per word: a sentence's words are in reading order with increasing ends,
    so the words a span [a, b) overlaps are one range found by bisection (the first word
    ending after ``a`` up to the last starting before ``b``); spans far fewer than words.
    """
    if not words:
        return {}
    sentences = [sentence for _, sentence, _, _ in words]
    starts = [start for _, _, start, _ in words]
    ends = [end for _, _, _, end in words]
    found: dict[int, tuple[int, int]] = {}
    for sentence in range(sentences[0], sentences[-1] + 1):
        spans = spans_per_sentence[sentence]
        if not spans:
            continue
        low = bisect.bisect_left(sentences, sentence)
        high = bisect.bisect_right(sentences, sentence, low)
        for k, (a, b) in enumerate(spans):
            first = bisect.bisect_right(ends, a, low, high)
            last = bisect.bisect_left(starts, b, first, high)
            for index in range(first, last):
                found.setdefault(index + 1, (sentence, k))
    return found
