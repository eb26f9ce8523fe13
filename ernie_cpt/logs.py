"""Where messages go: ernie-cpt's own lines on stderr, library chatter in the run's log file.

``setup`` is called once by ``ernie-cpt``. Then

- ernie-cpt's loggers (``ernie_cpt.*``, ``schedules``, ``pretrain_tasks``) write INFO and
  above to stderr (DEBUG with ``-v``) and everything to the log file;
- the libraries' loggers (DeepSpeed, datasets, transformers, bm25s, Python ``warnings`` ...)
  write only to the log file, unless ``-v`` puts them on stderr too;
- records logged before a command knows its directory are kept and written when
  ``attach_file`` opens the log (``<run>/run.log`` for ``train``);
- ``tame_libraries`` undoes what libraries do to logging on import: DeepSpeed's handler on
  *stdout* (which mixed its lines into ``train``'s JSON), transformers' own stderr handler and
  ``datasets``' progress bars other than those of ernie-cpt's phases (``PHASE_BARS``).

stdout is left to the command's result (``cli.emit``).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

LIBRARIES = (
    "DeepSpeed",
    "deepspeed",
    "datasets",
    "transformers",
    "bm25s",
    "httpx",
    "urllib3",
    "filelock",
    "fsspec",
    "wandb",
    "jieba",
    "py.warnings",
    "stdout",
)
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
BUFFERED = 10_000  # records kept before a log file is attached
# ``desc`` of the progress bars of ernie-cpt's own phases (``datasets.map`` calls in
# ``data.corpus`` and ``data.prepare``); datasets' other bars (save, flatten) stay hidden.
PHASE_BARS = ("prepare ", "Splitting sentences")


class LogFile(logging.Handler):
    """Writes to a file once ``attach`` names one; until then keeps the records."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter(FORMAT))
        self.file: logging.FileHandler | None = None
        self.pending: list[logging.LogRecord] = []

    def attach(self, path: Path) -> None:
        """Append to ``path`` from now on, starting with the records kept so far."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.file is not None:
            self.file.close()
        self.file = logging.FileHandler(path, encoding="utf-8")
        self.file.setFormatter(self.formatter)
        for record in self.pending:
            self.file.emit(record)
        self.pending.clear()

    def emit(self, record: logging.LogRecord) -> None:
        """Write (or keep) one record."""
        if self.file is not None:
            self.file.emit(record)
        elif len(self.pending) < BUFFERED:
            self.pending.append(record)

    def close(self) -> None:
        """Close the file."""
        if self.file is not None:
            self.file.close()
        super().close()


LOG_FILE = LogFile()
_state = {"verbose": False}


def setup(verbose: bool = False) -> None:
    """Route ernie-cpt's messages to stderr, the libraries' to the log file (both with -v)."""
    _state["verbose"] = verbose
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.DEBUG if verbose else logging.INFO)
    stderr.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(stderr)
    root.addHandler(LOG_FILE)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)
    if not verbose:
        os.environ.setdefault("WANDB_SILENT", "true")  # wandb prints banners, not log records
    quiet_library_loggers()


def quiet_library_loggers() -> None:
    """The libraries' loggers: the log file only (quiet), or the root's handlers (-v)."""
    verbose = _state["verbose"]
    for name in LIBRARIES:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = verbose
        if not verbose:
            logger.addHandler(LOG_FILE)


def phase_bars_only(datasets: Any) -> None:
    """``datasets`` draws a bar for every map, save and flatten (~190 refreshes for the demo);
    keep only those of ernie-cpt's phases, named by their ``desc`` (``PHASE_BARS``)."""
    module = sys.modules[datasets.utils.tqdm.__module__]
    cls = module.tqdm
    if getattr(cls, "_phase_bars_only", False):
        return
    original = cls.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if not str(kwargs.get("desc") or "").startswith(PHASE_BARS):
            kwargs["disable"] = True
        original(self, *args, **kwargs)

    cls.__init__ = __init__
    cls._phase_bars_only = True


def tame_libraries(deepspeed: bool = False) -> None:
    """Undo the logging set-up libraries do on import (call before their work starts)."""
    try:
        import datasets
        import transformers.utils.logging as hf_logging
    except ImportError:  # pragma: no cover - both are dependencies
        return
    hf_logging.disable_default_handler()  # its own stderr handler, propagation off
    if not _state["verbose"]:
        phase_bars_only(datasets)
        hf_logging.disable_progress_bar()
    if deepspeed:  # its logger's handler binds sys.stdout at import: PrintedLines then
        from deepspeed.utils import logger as _  # noqa: F401
    quiet_library_loggers()


class PrintedLines:
    """A stdout stand-in while a command runs: what libraries ``print`` becomes lines of the
    ``stdout`` logger (the log file; stderr too with -v), never part of the result."""

    def __init__(self) -> None:
        self.partial = ""

    def write(self, text: str) -> int:
        """Log each complete line."""
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        for line in lines:
            if line.strip():
                logging.getLogger("stdout").info("%s", line)
        return len(text)

    def flush(self) -> None:
        """Nothing is held but an unfinished line."""

    def isatty(self) -> bool:
        """Not a terminal (libraries then skip colours and bars)."""
        return False


def attach_file(path: str | Path) -> Path:
    """Start writing the log to ``path`` (``<run>/run.log``); returns it."""
    path = Path(path)
    LOG_FILE.attach(path)
    return path
