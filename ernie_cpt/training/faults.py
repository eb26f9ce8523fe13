"""Fault injection for tests: ``ERNIE_CPT_FAULT=<point>:<step>`` makes a run fail on purpose.

Points: ``after_step`` (SIGKILL after the step's metrics row is written), ``in_save``
(SIGKILL after the engine state is written, before the checkpoint is complete).
"""

from __future__ import annotations

import os
import signal

ENV = "ERNIE_CPT_FAULT"


def fault_active(name: str, step: int) -> bool:
    """Whether the fault ``name`` is requested at ``step``."""
    return os.environ.get(ENV) == f"{name}:{step}"


def fault_point(name: str, step: int) -> None:
    """SIGKILL this process when ``ERNIE_CPT_FAULT`` names this point and step."""
    if fault_active(name, step):
        os.kill(os.getpid(), signal.SIGKILL)
