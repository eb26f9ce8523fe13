"""The registry of pre-training tasks: name (= file stem = config string) -> task class.

Third-party tasks register through the ``ernie_cpt.pretrain_tasks`` entry-point group
(``name = "package.module:TaskClass"``); nothing is registered by import side effects.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from pretrain_tasks.base import PretrainTask, settings_from_options
from pretrain_tasks.capitalization import CapitalizationTask
from pretrain_tasks.discourse_relation import DiscourseRelationTask
from pretrain_tasks.ir_relevance import IRRelevanceTask
from pretrain_tasks.knowledge_masking import KnowledgeMaskingTask
from pretrain_tasks.mlm import MLMTask
from pretrain_tasks.sentence_distance import SentenceDistanceTask
from pretrain_tasks.sentence_reordering import SentenceReorderingTask
from pretrain_tasks.token_document_relation import TokenDocumentRelationTask

ENTRY_POINT_GROUP = "ernie_cpt.pretrain_tasks"

TASKS: dict[str, type] = {
    "mlm": MLMTask,
    "knowledge_masking": KnowledgeMaskingTask,
    "capitalization": CapitalizationTask,
    "token_document_relation": TokenDocumentRelationTask,
    "sentence_reordering": SentenceReorderingTask,
    "sentence_distance": SentenceDistanceTask,
    "discourse_relation": DiscourseRelationTask,
    "ir_relevance": IRRelevanceTask,
}


def available_tasks() -> dict[str, type]:
    """Built-in tasks plus those installed through the entry-point group."""
    found = dict(TASKS)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name not in found:
            found[point.name] = point.load()
    return found


def get_task_class(name: str) -> type:
    """The class registered under ``name``; unknown names raise with a suggestion."""
    from difflib import get_close_matches

    tasks = available_tasks()
    if name not in tasks:
        close = get_close_matches(name, tasks, n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise ValueError(f"unknown task {name!r}{hint}; known: {', '.join(sorted(tasks))}")
    return tasks[name]


def build_task(
    name: str, options: Mapping[str, Any], tokenizer: Any, max_seq_length: int
) -> PretrainTask:
    """Instantiate task ``name`` with its options validated against its Settings."""
    cls = get_task_class(name)
    return cls(settings_from_options(cls.Settings, options, name), tokenizer, max_seq_length)


__all__ = [
    "ENTRY_POINT_GROUP",
    "TASKS",
    "PretrainTask",
    "available_tasks",
    "build_task",
    "get_task_class",
]
