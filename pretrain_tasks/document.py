"""The document type every task builds examples from: id, optional title, paragraphs of sentences.

Stored in Arrow as ``{"id": str, "title": str | None, "paragraphs": [{"heading": str | None,
"sentences": [str, ...]}, ...]}``; ``Document.from_record`` / ``to_record`` convert.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Paragraph:
    """Consecutive sentences; ``heading`` is the section heading the paragraph sits under."""

    sentences: tuple[str, ...]
    heading: str | None = None


@dataclass(frozen=True)
class Document:
    """One document of the corpus, already split into paragraphs and sentences."""

    id: str
    title: str | None
    paragraphs: tuple[Paragraph, ...]

    def sentences(self) -> list[str]:
        """All sentences in reading order."""
        return [s for p in self.paragraphs for s in p.sentences]

    @property
    def num_sentences(self) -> int:
        """Number of sentences over all paragraphs."""
        return sum(len(p.sentences) for p in self.paragraphs)

    def to_record(self) -> dict[str, Any]:
        """The Arrow/JSON record form."""
        return {
            "id": self.id,
            "title": self.title,
            "paragraphs": [
                {"heading": p.heading, "sentences": list(p.sentences)} for p in self.paragraphs
            ],
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Document:
        """Inverse of ``to_record``."""
        return cls(
            id=str(record["id"]),
            title=record.get("title"),
            paragraphs=tuple(
                Paragraph(tuple(p["sentences"]), p.get("heading"))
                for p in record.get("paragraphs") or ()
            ),
        )
