"""Graceful stop on SIGTERM / SIGINT: finish the step, checkpoint, exit 128 + signal number.

Cluster schedulers (Slurm, Kubernetes) send SIGTERM some seconds before SIGKILL. The first
signal only sets a flag; the loop reduces it over ranks with the step's statistics (no extra
collective), so every rank stops after the same step, writes the checkpoint and the run exits
with 143 (SIGTERM) or 130 (SIGINT). A second signal exits at once with that code.
"""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """The first SIGTERM/SIGINT received while installed (0 while none)."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def install(self) -> StopRequest:
        """Handle SIGTERM and SIGINT (main thread only); returns self."""
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        """Put back the handlers found at ``install``."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        self.signum = signum
        log.warning(
            "%s received: finishing this step, writing a checkpoint, then exiting "
            "(send it again to exit at once)",
            signal.Signals(signum).name,
        )

    @staticmethod
    def exit_code(signum: int) -> int:
        """The documented exit code of a run stopped by ``signum``."""
        return 128 + signum
