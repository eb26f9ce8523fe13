"""Shared argument checks for schedule builders, with "did you mean" hints."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """A ``" (did you mean 'x'?)"`` suffix for the closest known name, or ``""``."""
    matches = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def unknown_name(what: str, name: str, known: Iterable[str]) -> ValueError:
    """A ValueError for an unknown ``what`` named ``name``, listing the known ones."""
    known = sorted(known)
    return ValueError(f"unknown {what} {name!r}{did_you_mean(name, known)}; known: {known}")


def check_tasks(
    tasks: Sequence[str], iterations_per_task: int, minimum: int, kind: str
) -> list[str]:
    """Check the arguments every built-in builder takes; return the tasks as a list.

    ``minimum`` is the smallest ``iterations_per_task`` for which every stage of the
    schedule gets at least one step of every task it names.
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError(f"{kind} needs at least one task")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"duplicate task names: {tasks}")
    if isinstance(iterations_per_task, bool) or not isinstance(iterations_per_task, int):
        raise ValueError(f"iterations_per_task must be an int, got {iterations_per_task!r}")
    if iterations_per_task < minimum:
        raise ValueError(
            f"{kind}: iterations_per_task must be >= {minimum} for {len(tasks)} tasks, "
            f"got {iterations_per_task}"
        )
    return tasks
