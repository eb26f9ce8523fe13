"""Discourse relation: the relation between two sentences (ERNIE 2.0, section 4.2.3).

ERNIE 2.0 used the data of Sileo et al. (2019, "Mining Discourse Markers for Unsupervised
Sentence Representation Learning", the Discovery dataset): pairs (s1, s2) of adjacent
sentences where s2 opened with a discourse marker; the marker is removed and predicted.

Mining here (no user data): adjacent sentences of one document that do not cross a change
of section heading; s2 must open with a marker of ``MARKERS`` (matched case-insensitively,
on word boundaries, longest marker first, so "for example" wins over shorter markers and
"Thenceforth" is not "then"). Markers that often open a sentence without linking it to the
previous one ("So many ...", "Still life ...", "In addition to X, ...") only count when a
comma follows them (``needs_comma``). Subordinators ("Because X, Y", "Although X, Y") are
left out: they relate two clauses of s2, not s2 to s1. The marker and a following comma
are removed and the next letter upper-cased: "However, the plan failed." -> "The plan
failed.". There is no "no marker" class.

Labels (``label_by``): "class" (default) = the relation class of the marker, one of
``RELATIONS`` (10 classes); "marker" = the marker itself, with the order of ``MARKERS`` as
class ids.

User data (``user_data``: a Discovery-style file, .jsonl with keys s1, s2, marker, or .tsv
with columns s1, s2, marker and an optional header line) replaces mining. The file is read
once, when the task is built; markers are normalised (lower case, "_" -> " ", no trailing
comma). With ``label_by: marker`` the classes are the distinct markers of the file, sorted
(Discovery's 174 markers, as in the paper); with ``label_by: class`` every marker must be in
``MARKERS`` (otherwise a clear error). Each row is yielded by exactly one document of the
corpus view: the document ``sorted(distinct ids)[stable_seed(row) % count]``, so the
examples do not depend on the number of workers. Documents given no row are skipped
("no_user_rows_for_document").
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pretrain_tasks.base import (
    CorpusView,
    SentenceClassification,
    SkipDocument,
    UserRows,
    read_user_rows,
)
from pretrain_tasks.document import Document
from pretrain_tasks.packing import encode_pair
from schedules import options

LABEL_COLUMN = "discourse_relation_label"
LABEL_BY = ("class", "marker")

RELATIONS = (
    "contrast",
    "concession",
    "cause",
    "result",
    "example",
    "restatement",
    "time",
    "addition",
    "similarity",
    "alternative",
)

# (marker, relation, needs_comma). The order is the class order of ``label_by: marker``.
MARKERS: tuple[tuple[str, str, bool], ...] = (
    # contrast: s2 opposes s1
    ("however", "contrast", False),
    ("but", "contrast", False),
    ("yet", "contrast", True),
    ("in contrast", "contrast", True),
    ("by contrast", "contrast", True),
    ("on the other hand", "contrast", False),
    ("on the contrary", "contrast", False),
    ("conversely", "contrast", False),
    # concession: s2 holds despite s1
    ("nevertheless", "concession", False),
    ("nonetheless", "concession", False),
    ("even so", "concession", False),
    ("still", "concession", True),
    ("admittedly", "concession", False),
    ("despite this", "concession", False),
    ("in spite of this", "concession", False),
    ("regardless", "concession", True),
    ("all the same", "concession", True),
    # cause: s2 explains s1
    ("after all", "cause", False),
    ("this is because", "cause", False),
    ("that is because", "cause", False),
    ("this was because", "cause", False),
    ("that was because", "cause", False),
    ("the reason is that", "cause", False),
    # result: s2 follows from s1
    ("therefore", "result", False),
    ("thus", "result", False),
    ("hence", "result", False),
    ("consequently", "result", False),
    ("as a result", "result", True),
    ("as a consequence", "result", True),
    ("accordingly", "result", False),
    ("so", "result", True),
    ("for this reason", "result", False),
    ("for that reason", "result", False),
    ("because of this", "result", False),
    ("because of that", "result", False),
    ("due to this", "result", False),
    # example: s2 illustrates s1
    ("for example", "example", False),
    ("for instance", "example", False),
    ("to illustrate", "example", False),
    ("in particular", "example", False),
    ("as an example", "example", True),
    ("notably", "example", False),
    # restatement: s2 restates, specifies or sums up s1
    ("in other words", "restatement", False),
    ("that is", "restatement", True),
    ("namely", "restatement", False),
    ("in fact", "restatement", False),
    ("indeed", "restatement", False),
    ("actually", "restatement", True),
    ("specifically", "restatement", False),
    ("in short", "restatement", True),
    ("in summary", "restatement", False),
    ("in conclusion", "restatement", False),
    ("to summarize", "restatement", False),
    ("to sum up", "restatement", False),
    ("overall", "restatement", True),
    ("in brief", "restatement", False),
    ("in essence", "restatement", False),
    # time: s2 is ordered in time relative to s1
    ("then", "time", False),
    ("later", "time", True),
    ("afterwards", "time", False),
    ("afterward", "time", False),
    ("subsequently", "time", False),
    ("meanwhile", "time", False),
    ("in the meantime", "time", False),
    ("eventually", "time", False),
    ("finally", "time", False),
    ("previously", "time", True),
    ("earlier", "time", True),
    ("initially", "time", True),
    ("soon after", "time", True),
    ("shortly after", "time", True),
    ("after that", "time", True),
    ("before that", "time", True),
    ("until then", "time", True),
    ("at the same time", "time", False),
    ("simultaneously", "time", False),
    ("next", "time", True),
    # addition: s2 adds to s1
    ("in addition", "addition", True),
    ("moreover", "addition", False),
    ("furthermore", "addition", False),
    ("additionally", "addition", False),
    ("also", "addition", True),
    ("besides", "addition", True),
    ("what is more", "addition", False),
    ("further", "addition", True),
    ("on top of that", "addition", False),
    # similarity: s2 is like s1
    ("similarly", "similarity", False),
    ("likewise", "similarity", False),
    ("in the same way", "similarity", False),
    ("in the same vein", "similarity", False),
    ("by the same token", "similarity", False),
    ("equally", "similarity", True),
    ("correspondingly", "similarity", False),
    # alternative: s2 replaces s1
    ("instead", "alternative", True),
    ("alternatively", "alternative", False),
    ("otherwise", "alternative", False),
    ("rather", "alternative", True),
)
MARKER_NAMES = tuple(marker for marker, _, _ in MARKERS)
MARKER_RELATION = {marker: relation for marker, relation, _ in MARKERS}


# ---------------------------------------------------------------- marker matching


def _marker_pattern(markers: Sequence[tuple[str, str, bool]]) -> re.Pattern[str]:
    """One regex: a marker at the start (longest first), then a comma or a space."""
    alternatives = []
    for marker, _, needs_comma in sorted(markers, key=lambda m: (-len(m[0]), m[0])):
        words = r"\s+".join(re.escape(w) for w in marker.split())
        tail = r"\s*," if needs_comma else r"(?:\s*,|(?=\s))"
        alternatives.append(f"(?:{words}{tail})")
    return re.compile(r"^\s*(?:" + "|".join(alternatives) + r")", re.IGNORECASE)


_PATTERN = _marker_pattern(MARKERS)


def normalize_marker(marker: str) -> str:
    """Canonical marker text: lower case, "_" as space, single spaces, no trailing comma."""
    return " ".join(marker.replace("_", " ").lower().strip().rstrip(",").split())


def find_marker(sentence: str) -> tuple[str, str] | None:
    """(marker, rest of the sentence, re-capitalised) if ``sentence`` opens with a marker."""
    match = _PATTERN.match(sentence)
    if match is None:
        return None
    rest = sentence[match.end() :].lstrip(" \t\n,").strip()
    if not any(c.isalnum() for c in rest):
        return None
    return normalize_marker(match.group(0)), rest[0].upper() + rest[1:]


def adjacent_pairs(document: Document) -> list[tuple[str, str]]:
    """Adjacent sentences in reading order, not crossing a change of section heading."""
    pairs, previous, heading = [], None, object()
    for paragraph in document.paragraphs:
        if paragraph.heading != heading:
            previous, heading = None, paragraph.heading
        for sentence in paragraph.sentences:
            if previous is not None:
                pairs.append((previous, sentence))
            previous = sentence
    return pairs


def marked_pairs(document: Document) -> list[tuple[str, str, str]]:
    """(s1, s2 without its marker, marker) for every adjacent pair whose s2 opens with one."""
    out = []
    for first, second in adjacent_pairs(document):
        found = find_marker(second)
        if found is not None and any(c.isalnum() for c in first):
            out.append((first, found[1], found[0]))
    return out


# ---------------------------------------------------------------- user data


def read_discovery(path: str | Path) -> list[tuple[str, str, str]]:
    """(s1, s2, marker) rows from a Discovery-style .jsonl or .tsv file (markers normalised)."""
    rows = read_user_rows(path, ("s1", "s2", "marker"))
    return [(s1, s2, normalize_marker(marker)) for _, (s1, s2, marker) in rows]


# ---------------------------------------------------------------- the task


@dataclass(frozen=True)
class DiscourseRelationSettings(options.Settings):
    """Options of the ``discourse_relation`` task."""

    label_by: str = "class"
    user_data: str | None = None
    max_pairs_per_document: int = options.bounded(64, low=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.label_by not in LABEL_BY:
            raise ValueError(f"label_by must be one of {LABEL_BY}, got {self.label_by!r}")


class DiscourseRelationTask(SentenceClassification):
    """Classify the discourse relation (or marker) linking a sentence to the one before it."""

    name: ClassVar[str] = "discourse_relation"
    family: ClassVar[str] = "semantic-aware"
    level: ClassVar[str] = "sentence"
    Settings: ClassVar[type] = DiscourseRelationSettings
    label_column: ClassVar[str] = LABEL_COLUMN

    def __init__(
        self, settings: DiscourseRelationSettings, tokenizer: Any, max_seq_length: int
    ) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.user_rows: list[tuple[str, str, str]] = []
        self.label_names: tuple[str, ...] = (
            RELATIONS if settings.label_by == "class" else MARKER_NAMES
        )
        if settings.user_data is not None:
            self.user_rows = read_discovery(settings.user_data)
            markers = {marker for _, _, marker in self.user_rows}
            if settings.label_by == "marker":
                self.label_names = tuple(sorted(markers))
            else:
                unknown = sorted(markers - set(MARKER_NAMES))
                if unknown:
                    raise ValueError(
                        f"{settings.user_data}: {len(unknown)} markers have no relation class "
                        f"(e.g. {unknown[:10]}); use label_by: marker to predict the markers"
                    )
            self._assignment = UserRows(len(self.user_rows), f"{self.name}:{settings.user_data}")
        self._label_of = {name: i for i, name in enumerate(self.label_names)}
        self.num_labels = len(self.label_names)

    def label_of(self, marker: str) -> int:
        """Class id of a (normalised) marker under ``label_by``."""
        if self.settings.label_by == "class":
            return self._label_of[MARKER_RELATION[marker]]
        return self._label_of[marker]

    def build_examples(
        self, document: Document, corpus: CorpusView, rng: random.Random
    ) -> list[dict[str, Any]]:
        """Mined marked pairs of this document, or the user rows it is assigned."""
        if self.settings.user_data is not None:
            rows = [self.user_rows[i] for i in self._assignment.for_document(corpus, document.id)]
            if not rows:
                raise SkipDocument("no_user_rows_for_document")
        else:
            rows = marked_pairs(document)
            if not rows:
                raise SkipDocument(
                    "fewer_than_two_sentences" if document.num_sentences < 2 else "no_marked_pair"
                )
            limit = self.settings.max_pairs_per_document
            if len(rows) > limit:
                rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), limit))]
        return [
            {
                **encode_pair(self.tokenizer, first, second, self.max_seq_length),
                LABEL_COLUMN: self.label_of(marker),
            }
            for first, second, marker in rows
        ]
