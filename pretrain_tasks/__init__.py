"""The registry of pre-training tasks: name (= file stem = config string) -> task class.

Third-party tasks register through the ``ernie_cpt.pretrain_tasks`` entry-point group
(``name = "package.module:TaskClass"``); nothing is registered by import side effects.
Every class is checked when it is registered (``check_task_class``); an entry point whose
name is a built-in task's is ignored with a warning (the built-in wins). A plug-in author
checks a task's behaviour with ``pretrain_tasks.contract.check_task``.
"""

from __future__ import annotations

import dataclasses
import inspect
import keyword
import warnings
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from pretrain_tasks.base import FAMILIES, LEVELS, PretrainTask, settings_from_options
from pretrain_tasks.capitalization import CapitalizationTask
from pretrain_tasks.discourse_relation import DiscourseRelationTask
from pretrain_tasks.ir_relevance import IRRelevanceTask
from pretrain_tasks.knowledge_masking import KnowledgeMaskingTask
from pretrain_tasks.mlm import MLMTask
from pretrain_tasks.sentence_distance import SentenceDistanceTask
from pretrain_tasks.sentence_reordering import SentenceReorderingTask
from pretrain_tasks.token_document_relation import TokenDocumentRelationTask
from schedules.options import unknown_name_message

ENTRY_POINT_GROUP = "ernie_cpt.pretrain_tasks"


class TaskRegistrationError(TypeError):
    """A task class that breaks the contract's class-level rules."""


def _class_problems(cls: Any) -> list[str]:
    """What is wrong with ``cls`` as a task class (empty when nothing)."""
    if not inspect.isclass(cls):
        return [f"{cls!r} is not a class"]
    name = getattr(cls, "name", None)
    problems = []
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        problems.append(f"name must be a Python identifier string, got {name!r}")
    if getattr(cls, "family", None) not in FAMILIES:
        problems.append(f"family must be one of {FAMILIES}, got {getattr(cls, 'family', None)!r}")
    level = getattr(cls, "level", None)
    if level not in LEVELS:
        problems.append(f"level must be one of {LEVELS}, got {level!r}")
    masks = getattr(cls, "masks_inputs", None)
    if not isinstance(masks, bool):
        problems.append(f"masks_inputs must be True or False, got {masks!r}")
    if level == "token" and not callable(getattr(cls, "attach", None)):
        problems.append('level "token" needs an attach(batch, examples, generator) method')
    if masks and level != "token":
        problems.append('masks_inputs is only allowed for level "token" tasks')
    if not dataclasses.is_dataclass(getattr(cls, "Settings", None)):
        problems.append("Settings must be a dataclass of the task's options")
    missing = [m for m in _METHODS if not callable(getattr(cls, m, None))]
    if missing:
        problems.append(f"missing methods {missing}")
    return problems


_METHODS = ("build_examples", "example_columns", "collate", "build_head", "loss", "metrics")


def check_task_class(cls: Any, registered_as: str | None = None) -> type:
    """Return ``cls`` if it may be registered (as ``registered_as``), else raise
    TaskRegistrationError listing every problem: name, family, level, masks_inputs,
    ``attach`` for token-level tasks, the Settings dataclass and the methods."""
    problems = _class_problems(cls)
    if registered_as is not None and getattr(cls, "name", None) != registered_as:
        problems.append(f"registered as {registered_as!r} but its name is {cls.name!r}")
    if problems:
        where = registered_as or getattr(cls, "__name__", repr(cls))
        raise TaskRegistrationError(f"task {where!r}: " + "; ".join(problems))
    return cls


TASKS: dict[str, type] = {
    cls.name: check_task_class(cls)
    for cls in (
        MLMTask,
        KnowledgeMaskingTask,
        CapitalizationTask,
        TokenDocumentRelationTask,
        SentenceReorderingTask,
        SentenceDistanceTask,
        DiscourseRelationTask,
        IRRelevanceTask,
    )
}


def available_tasks() -> dict[str, type]:
    """Built-in tasks plus those installed through the entry-point group (each checked)."""
    found = dict(TASKS)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in TASKS:
            warnings.warn(
                f"entry point {point.name!r} ({point.value}) in group {ENTRY_POINT_GROUP!r} "
                f"has the name of a built-in task; the built-in task is used and the entry "
                "point ignored",
                stacklevel=2,
            )
            continue
        if point.name not in found:
            found[point.name] = check_task_class(point.load(), registered_as=point.name)
    return found


def get_task_class(name: str) -> type:
    """The class registered under ``name``; unknown names raise with a suggestion."""
    tasks = available_tasks()
    if name not in tasks:
        raise ValueError(unknown_name_message("task", name, tasks))
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
    "TaskRegistrationError",
    "available_tasks",
    "build_task",
    "check_task_class",
    "get_task_class",
]
