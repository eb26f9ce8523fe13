"""Shared argument checks for schedule builders (hints from ``schedules.options``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from schedules.options import did_you_mean, unknown_name_message

__all__ = ["check_tasks", "did_you_mean", "unknown_name"]


def unknown_name(what: str, name: str, known: Iterable[str]) -> ValueError:
    """A ValueError for an unknown ``what`` named ``name``, listing the known ones."""
    return ValueError(unknown_name_message(what, name, known))


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
