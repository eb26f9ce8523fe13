"""Schedules: how pre-training tasks are combined over time. Pure Python, no torch.

``SCHEDULES`` maps a config string to a builder ``(tasks, iterations_per_task) -> Schedule``.
"""

from __future__ import annotations

from schedules.cmtl import cmtl
from schedules.sampling import SAMPLERS, sample_task
from schedules.types import Schedule, Stage

SCHEDULES = {"cmtl": cmtl}

__all__ = ["SAMPLERS", "SCHEDULES", "Schedule", "Stage", "cmtl", "sample_task"]
