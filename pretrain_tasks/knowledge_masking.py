"""Knowledge masking: words, phrases and named entities masked as whole units (ERNIE 1.0, 3.2).

ERNIE 1.0 (Sun et al. 2019, arXiv 1904.09223, section 3.2) masks at three levels: basic
(whole words), phrase (all words of a phrase together) and entity (all words of a named
entity together), and predicts the original tokens. This is the first word-aware task of
ERNIE 2.0 (arXiv 1907.12412, section 4.2.1).

Examples are packed runs of consecutive sentences, exactly as in ``mlm``. Each example stores
two unit segmentations computed at prepare time, ``knowledge_masking_phrase_units`` and
``knowledge_masking_entity_units`` (per token: 0 = special, k > 0 = unit id). Each is a full
segmentation: the tokens of one phrase (entity) share an id and every other word is a unit of
its own, so a level keeps the masking rate of whole-word masking while never splitting a
phrase (entity). The basic level's units are the words themselves (``word_starts``).

Level mixing: ``level_weights`` (e.g. ``{basic: 1, phrase: 1, entity: 1}``; missing levels
weigh 0) gives, after normalisation, the probability that an example uses that level's
units. The level is drawn anew per example in every batch by the collator, so an example
sees all levels over the epochs, and a curriculum (basic -> phrase -> entity) is a matter of
giving each stage different ``level_weights``. An example whose chosen level found no span
is masked word by word, like the basic level.

Span finders (prepare time, offline, deterministic):

- phrases: collocations mined from the document's own sentences (``mine_collocations``:
  bigrams/trigrams seen at least ``phrase_min_count`` times whose normalised PMI is at least
  ``phrase_min_npmi``, not starting or ending with a stop word and never crossing
  punctuation), plus the lines of ``phrase_gazetteer`` (matched case-insensitively);
- entities: runs of capitalised words in the original cased text (``find_capitalised_entities``:
  at least two capitalised words, name particles such as "of" or "von" allowed inside, a
  sentence-initial stop word such as "The" dropped), plus the lines of ``entity_gazetteer``
  (matched case-sensitively with Aho-Corasick), plus, only when ``spacy_model`` is set, the
  entities of that locally installed spaCy pipeline (never downloaded).

Overlapping spans of one level are resolved longest first, then leftmost. Character spans
are mapped to tokens through the fast tokenizer's offset mapping, and a unit always covers
whole words.

Masking (train time, vectorised, from the batch generator): each unit is chosen with
``mask_probability``; all tokens of a chosen unit get one action, 80% [MASK] / 10% random
token / 10% kept. The loss is taken over masked positions only with the tied masked-LM head
of ``mlm``. On another task's batch (``attach``) the units are the words of ``word_starts``.

Interplay with other masking tasks (``mlm``): when several label the same batch, knowledge
masking never masks a position another one already masked (``masking.MASKED_POSITIONS``),
so running it second keeps both tasks' labels correct (original token ids).

The word and span helpers it builds on (``spans``, ``packing``) are shared by the
word-aware tasks; the masking functions and masked-LM head (``masking``) with ``mlm``.
"""

from __future__ import annotations

import itertools
import math
import operator
import random
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from pretrain_tasks.base import (
    AttachingCollate,
    CorpusView,
    Encoded,
    SkipDocument,
    TaskLoss,
    labelled_positions,
    pad_column,
)
from pretrain_tasks.document import Document
from pretrain_tasks.masking import (
    MaskedLMHead,
    add_gather_index,
    maskable_positions,
    masked_lm_batch_loss,
    masked_lm_metrics,
    record_masked,
    unit_mask,
)
from pretrain_tasks.packing import pack_sentences_with_offsets
from pretrain_tasks.spans import (
    STOP_WORDS,
    Span,
    lowered_word_runs,
    select_non_overlapping,
    units_from_spans,
    word_runs,
    words_with_offsets,
)
from schedules import options

KNOWLEDGE_LEVELS = ("basic", "phrase", "entity")
PHRASE_UNITS = "knowledge_masking_phrase_units"
ENTITY_UNITS = "knowledge_masking_entity_units"
PHRASE_COUNT = "knowledge_masking_phrases"
ENTITY_COUNT = "knowledge_masking_entities"
LABELS = "knowledge_masking_labels"

# Lower-case words allowed inside a capitalised name ("Bank of England", "Ludwig van Beethoven").
NAME_PARTICLES = frozenset("of de da di du del della der den van von la le".split())

# Stop words allowed inside a phrase ("bank of england", "research and development").
PHRASE_CONNECTORS = NAME_PARTICLES | {"and", "for"}

_IRREGULAR_SPACE = re.compile(r"\s{2,}|[^\S ]")


# ---------------------------------------------------------------- span finders (prepare time)


def normalised_pmi(count: int, word_counts: Sequence[int], total: int) -> float:
    """PMI of an n-gram divided by its maximum, -(n-1) log p(ngram): 1 = always together."""
    p_gram = count / total
    if p_gram >= 1.0:
        return 1.0
    pmi = math.log(p_gram) - sum(math.log(c / total) for c in word_counts)
    return pmi / (-(len(word_counts) - 1) * math.log(p_gram))


def _phrase_shaped(gram: tuple[str, ...], stop_words: Collection[str]) -> bool:
    """Alphabetic non-stop words at both ends; inside, content words or connectors."""
    edges_ok = all(w.isalpha() and w not in stop_words for w in (gram[0], gram[-1]))
    return edges_ok and all(w not in stop_words or w in PHRASE_CONNECTORS for w in gram[1:-1])


def mine_collocations(
    sentences: Sequence[str],
    *,
    min_count: int = 2,
    min_npmi: float = 0.5,
    max_words: int = 3,
    stop_words: Collection[str] = STOP_WORDS,
) -> list[tuple[str, ...]]:
    """Bi-/tri-gram collocations of a text by normalised PMI, as sorted lower-case tuples.

    Probabilities are relative frequencies over the text's word positions; n-grams never
    cross punctuation, start and end with an alphabetic non-stop word, and have no stop
    word inside but the connectors of ``PHRASE_CONNECTORS`` ("bank of england").
    """
    # Every run's words, each run followed by "" (no word): an n-gram holding "" would
    # cross a run boundary, so the C-level zip/compress below leave those out.
    flat: list[str] = []
    for sentence in sentences:
        for run in lowered_word_runs(sentence):
            flat += run
            flat.append("")
    unigrams = Counter(flat)
    del unigrams[""]
    total = sum(unigrams.values())
    # Only n-grams whose end words may end a phrase are counted (the others are never kept).
    edge = {w: w.isalpha() and w not in stop_words for w in unigrams}
    edge[""] = False
    edges = list(map(edge.__getitem__, flat))
    real = list(map(bool, flat))
    found = []
    for n in range(2, max_words + 1):
        keep: Iterable[bool] = map(operator.and_, edges, edges[n - 1 :])
        for inner in range(1, n - 1):
            keep = map(operator.and_, keep, real[inner:])
        shifted = zip(*(flat[k:] for k in range(n)), strict=False)  # the shortest ends it
        grams = Counter(itertools.compress(shifted, keep))
        for gram, count in grams.items():
            if count < min_count or not _phrase_shaped(gram, stop_words):
                continue
            if normalised_pmi(count, [unigrams[w] for w in gram], total) >= min_npmi:
                found.append(gram)
    return sorted(found)


def phrase_index(phrases: Collection[tuple[str, ...]]) -> tuple[list[int], set[str]]:
    """What ``find_phrase_spans`` looks ``phrases`` up by: their word counts, longest first,
    and their first words (only these can start a match)."""
    return sorted({len(p) for p in phrases}, reverse=True), {p[0] for p in phrases}


def find_phrase_spans(
    text: str,
    phrases: Collection[tuple[str, ...]],
    index: tuple[Sequence[int], AbstractSet[str]] | None = None,
) -> list[Span]:
    """Non-overlapping spans of ``text`` whose lower-cased words form one of ``phrases``
    (``index``: their ``phrase_index``, when the caller has it)."""
    lengths, firsts = index if index is not None else phrase_index(phrases)
    spans = []
    for run, lowered in zip(word_runs(text), lowered_word_runs(text), strict=True):
        if firsts.isdisjoint(lowered):
            continue
        for n in lengths:
            for i in range(len(run) - n + 1):
                if lowered[i] in firsts and tuple(lowered[i : i + n]) in phrases:
                    spans.append((run[i][1], run[i + n - 1][2]))
    return select_non_overlapping(spans)


def _capitalised(word: str) -> bool:
    return word[0].isupper() and word != "I"


def find_capitalised_entities(
    text: str, stop_words: Collection[str] = STOP_WORDS, min_words: int = 2
) -> list[Span]:
    """Runs of at least ``min_words`` capitalised words ("Charles Babbage", "New York Times").

    Name particles ("of", "von", ...) may join capitalised words; a sentence-initial stop
    word ("The New York Times") is dropped, since its capital only marks the sentence start.
    """
    words = words_with_offsets(text)
    first_start = words[0][1] if words else -1
    spans = []
    for run in word_runs(text):
        current: list[tuple[str, int, int]] = []
        for word in [*run, ("", -1, -1)]:  # a sentinel closes the last name
            if word[0] and _capitalised(word[0]):
                current.append(word)
                continue
            if not current:  # nothing to close (most words): skip the checks below
                continue
            if word[0] in NAME_PARTICLES:
                current.append(word)
                continue
            while current and current[-1][0] in NAME_PARTICLES:
                current.pop()
            if current and current[0][1] == first_start and current[0][0].lower() in stop_words:
                current.pop(0)
            if sum(_capitalised(w) for w, _, _ in current) >= min_words:
                spans.append((current[0][1], current[-1][2]))
            current = []
    return spans


def read_gazetteer(path: str | Path) -> list[str]:
    """Entries of a gazetteer file: one per line; blank lines and ``#`` comments skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _normalise_for_matching(text: str, case_sensitive: bool) -> tuple[str, list[int]]:
    """Whitespace runs -> one space (and case folded unless ``case_sensitive``), with the
    index of each output character in ``text``."""
    folded = text if case_sensitive else text.lower()
    if len(folded) == len(text) and not _IRREGULAR_SPACE.search(text):  # the common case
        return folded, list(range(len(text)))
    chars: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        if ch.isspace():
            if chars and chars[-1] == " ":
                continue
            ch = " "
        elif not case_sensitive and len(ch.lower()) == 1:
            ch = ch.lower()
        chars.append(ch)
        index.append(i)
    return "".join(chars), index


class GazetteerMatcher:
    """Whole-word matches of gazetteer entries in a text, with an Aho-Corasick automaton."""

    def __init__(self, entries: Iterable[str], case_sensitive: bool) -> None:
        self.case_sensitive = case_sensitive
        normalised = (_normalise_for_matching(e.strip(), case_sensitive)[0] for e in entries)
        self.entries = sorted({e for e in normalised if e})
        self._automaton: Any = None  # built on first use (not pickled)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_automaton": None}

    def _built(self) -> Any:
        if self._automaton is None:
            import ahocorasick

            automaton = ahocorasick.Automaton()
            for entry in self.entries:
                automaton.add_word(entry, len(entry))
            automaton.make_automaton()
            self._automaton = automaton
        return self._automaton

    def find(self, text: str) -> list[Span]:
        """Non-overlapping character spans of ``text`` that match an entry on word boundaries."""
        if not self.entries:
            return []
        normalised, index = _normalise_for_matching(text, self.case_sensitive)
        spans = []
        for end, length in self._built().iter(normalised):
            start = end - length + 1
            before_ok = start == 0 or not normalised[start - 1].isalnum()
            after_ok = end + 1 == len(normalised) or not normalised[end + 1].isalnum()
            if before_ok and after_ok:
                spans.append((index[start], index[end] + 1))
        return select_non_overlapping(spans)


def spacy_entity_spans(nlp: Any, sentences: Sequence[str]) -> list[list[Span]]:
    """Character spans of the entities a spaCy pipeline finds in each sentence."""
    return [[(e.start_char, e.end_char) for e in doc.ents] for doc in nlp.pipe(sentences)]


# ---------------------------------------------------------------- masking (train time)


def choose_units(
    level: Tensor, word_units: Tensor, phrase_units: Tensor, entity_units: Tensor
) -> Tensor:
    """Per example, the unit ids of its level (0 basic, 1 phrase, 2 entity): (B, T)."""
    candidates = torch.stack([word_units, phrase_units, entity_units], dim=1)  # (B, 3, T)
    index = level.view(-1, 1, 1).expand(-1, 1, candidates.shape[2])  # (B, 1, T)
    return candidates.gather(1, index).squeeze(1)


def _padded(rows: Sequence[Sequence[int]], length: int) -> Tensor:
    """Rows right-padded with 0 to exactly ``length`` columns: (B, length)."""
    tensor = pad_column(rows, 0)
    return nn.functional.pad(tensor, (0, max(length - tensor.shape[1], 0)))[:, :length]


# ---------------------------------------------------------------- the task


@dataclass(frozen=True)
class KnowledgeMaskingSettings(options.Settings):
    """Options of the ``knowledge_masking`` task (probabilities in [0, 1])."""

    mask_probability: float = options.probability(0.15)
    replace_probability: float = options.probability(0.8)
    random_probability: float = options.probability(0.1)
    # Relative probability that an example uses each level's units; missing levels weigh 0.
    level_weights: Mapping[str, float] = field(
        default_factory=lambda: {"basic": 1.0, "phrase": 1.0, "entity": 1.0}
    )
    phrase_min_count: int = 2
    phrase_min_npmi: float = 0.5
    phrase_max_words: int = 3
    phrase_gazetteer: str | None = None  # a file, one phrase per line
    entity_gazetteer: str | None = None  # a file, one entity per line (case-sensitive)
    spacy_model: str | None = None  # a locally installed spaCy pipeline name or path

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = sorted(set(self.level_weights) - set(KNOWLEDGE_LEVELS))
        if unknown:
            raise ValueError(f"level_weights: unknown levels {unknown}; known: {KNOWLEDGE_LEVELS}")
        weights = list(self.level_weights.values())
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError("level_weights: weights must be >= 0 with a positive sum")
        if not 2 <= self.phrase_max_words:
            raise ValueError("phrase_max_words must be >= 2")


class KnowledgeMaskingTask(AttachingCollate):
    """Mask whole words, phrases or entities and predict their tokens (ERNIE 1.0)."""

    name: ClassVar[str] = "knowledge_masking"
    family: ClassVar[str] = "word-aware"
    level: ClassVar[str] = "token"
    masks_inputs: ClassVar[bool] = True
    Settings: ClassVar[type] = KnowledgeMaskingSettings

    def __init__(
        self, settings: KnowledgeMaskingSettings, tokenizer: Any, max_seq_length: int
    ) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.num_labels = len(tokenizer)
        self.level_weights = torch.tensor(
            [float(settings.level_weights.get(level, 0.0)) for level in KNOWLEDGE_LEVELS]
        )
        self.phrase_gazetteer = (
            GazetteerMatcher(read_gazetteer(settings.phrase_gazetteer), case_sensitive=False)
            if settings.phrase_gazetteer
            else None
        )
        self.entity_gazetteer = (
            GazetteerMatcher(read_gazetteer(settings.entity_gazetteer), case_sensitive=True)
            if settings.entity_gazetteer
            else None
        )
        if settings.spacy_model:
            try:
                import spacy  # noqa: F401
            except ImportError as error:
                raise ValueError(
                    f"spacy_model={settings.spacy_model!r} needs spaCy, which is not installed"
                ) from error
        self._nlp: Any = None  # the spaCy pipeline, loaded on first use (not pickled)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_nlp": None}

    def example_columns(self) -> dict[str, str]:
        """Phrase- and entity-level unit ids per token, and how many spans each found."""
        return {
            PHRASE_UNITS: "int_list",
            ENTITY_UNITS: "int_list",
            PHRASE_COUNT: "int",
            ENTITY_COUNT: "int",
        }

    def phrase_spans(self, sentences: Sequence[str]) -> list[list[Span]]:
        """Per sentence: mined collocations and phrase-gazetteer matches, non-overlapping."""
        s = self.settings
        phrases = set(
            mine_collocations(
                sentences,
                min_count=s.phrase_min_count,
                min_npmi=s.phrase_min_npmi,
                max_words=s.phrase_max_words,
            )
        )
        index = phrase_index(phrases)
        out = []
        for sentence in sentences:
            spans = find_phrase_spans(sentence, phrases, index) if phrases else []
            if self.phrase_gazetteer is not None:
                spans += self.phrase_gazetteer.find(sentence)
            out.append(select_non_overlapping(spans))
        return out

    def entity_spans(self, sentences: Sequence[str]) -> list[list[Span]]:
        """Per sentence: capitalised names, entity-gazetteer and spaCy entities, non-overlapping."""
        from_spacy = (
            spacy_entity_spans(self._spacy(), sentences)
            if self.settings.spacy_model
            else [[] for _ in sentences]
        )
        out = []
        for sentence, extra in zip(sentences, from_spacy, strict=True):
            spans = find_capitalised_entities(sentence) + list(extra)
            if self.entity_gazetteer is not None:
                spans += self.entity_gazetteer.find(sentence)
            out.append(select_non_overlapping(spans))
        return out

    def _spacy(self) -> Any:
        if self._nlp is None:
            import spacy

            self._nlp = spacy.load(self.settings.spacy_model)
        return self._nlp

    def build_examples(
        self, document: Document, corpus: CorpusView, rng: random.Random
    ) -> list[dict[str, Any]]:
        """Packed runs of consecutive sentences with their phrase and entity units."""
        sentences = document.sentences()
        if not sentences:
            raise SkipDocument("no_sentences")
        phrases, entities = self.phrase_spans(sentences), self.entity_spans(sentences)
        examples = []
        for segment in pack_sentences_with_offsets(self.tokenizer, sentences, self.max_seq_length):
            phrase_units, phrase_count = units_from_spans(segment, phrases)
            entity_units, entity_count = units_from_spans(segment, entities)
            examples.append(
                {
                    **segment.shared_columns(),
                    PHRASE_UNITS: phrase_units,
                    ENTITY_UNITS: entity_units,
                    PHRASE_COUNT: phrase_count,
                    ENTITY_COUNT: entity_count,
                }
            )
        return examples

    def attach(
        self,
        batch: dict[str, Tensor],
        examples: Mapping[str, Sequence[Any]],
        generator: torch.Generator,
    ) -> bool:
        """Mask ``batch`` in place and add ``knowledge_masking_labels``; works on any batch.

        With this task's unit columns the level is drawn per example; on another task's
        batch the units are its words. Positions another masked-LM task already labelled
        are never masked again.
        """
        input_ids = batch["input_ids"]  # (B, T)
        maskable = maskable_positions(batch, self.tokenizer.all_special_ids)
        word_units = batch["word_starts"].long().cumsum(dim=1)  # (B, T)
        if PHRASE_UNITS in examples and ENTITY_UNITS in examples:
            length = input_ids.shape[1]
            level = torch.multinomial(
                self.level_weights, input_ids.shape[0], replacement=True, generator=generator
            )  # (B,)
            units = choose_units(
                level,
                word_units,
                _padded(examples[PHRASE_UNITS], length),
                _padded(examples[ENTITY_UNITS], length),
            )
        else:
            units = word_units
        s = self.settings
        batch["input_ids"], batch[LABELS] = unit_mask(
            input_ids,
            units * maskable,
            probability=s.mask_probability,
            mask_token_id=self.tokenizer.mask_token_id,
            vocab_size=len(self.tokenizer),
            generator=generator,
            replace_probability=s.replace_probability,
            random_probability=s.random_probability,
        )
        record_masked(batch, batch[LABELS])
        add_gather_index(batch, LABELS)
        return True

    def build_head(self, config: Any) -> nn.Module:
        """A masked-LM head whose decoder is tied to the word embeddings."""
        return MaskedLMHead(config.hidden_size, config.vocab_size, config.layer_norm_eps)

    def loss(self, head: nn.Module, encoded: Encoded, batch: Mapping[str, Tensor]) -> TaskLoss:
        """Cross-entropy over masked positions."""
        return masked_lm_batch_loss(head, encoded, batch, LABELS)

    def read_positions(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The masked tokens."""
        return labelled_positions(batch[LABELS])

    def metrics(self, stats: Mapping[str, float]) -> dict[str, float]:
        """Masked-token accuracy and perplexity."""
        return masked_lm_metrics(stats)

    def label_counts(self, columns: Mapping[str, Sequence[Any]]) -> dict[str, int]:
        """Units found per level (basic = words, phrase, entity) and tokens."""
        return {
            "basic": int(sum(sum(r) for r in columns["word_starts"])),
            "phrase": int(sum(columns[PHRASE_COUNT])),
            "entity": int(sum(columns[ENTITY_COUNT])),
            "tokens": int(sum(len(r) for r in columns["input_ids"])),
        }
