"""A plain-text table of a schedule's stages, for ``ernie-cpt schedule CONFIG``."""

from __future__ import annotations

from schedules.types import Schedule

HEADER = ("stage", "first step", "last step", "steps", "sampling", "weighting", "tasks (steps)")
NUMERIC_COLUMNS = {1, 2, 3}


def format_stage_table(schedule: Schedule) -> str:
    """One row per stage: name, first and last step (0-based, inclusive), steps, sampling,
    weighting and each task's budget; then a row with every task's total over the schedule.
    """
    rows = []
    for stage, first in zip(schedule.stages, schedule.boundaries, strict=False):
        budgets = " ".join(f"{task}={steps}" for task, steps in stage.budgets.items() if steps)
        last = first + stage.steps - 1
        rows.append(
            (
                stage.name,
                str(first),
                str(last),
                str(stage.steps),
                stage.sampling,
                stage.weighting,
                budgets,
            )
        )
    totals = " ".join(f"{task}={steps}" for task, steps in schedule.budget_per_task().items())
    total_row = ("total", "", "", str(schedule.total_steps), "", "", totals)
    widths = [max(len(row[i]) for row in [HEADER, *rows, total_row]) for i in range(len(HEADER))]

    def line(cells: tuple[str, ...]) -> str:
        padded = [
            cell.rjust(width) if i in NUMERIC_COLUMNS else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    count = len(schedule.stages)
    title = (
        f"schedule {schedule.name}: {count} stage{'s' * (count != 1)}, {schedule.total_steps} steps"
    )
    rule = "-" * max(len(line(row)) for row in [HEADER, *rows, total_row])
    return "\n".join([title, line(HEADER), rule, *map(line, rows), rule, line(total_row)])
