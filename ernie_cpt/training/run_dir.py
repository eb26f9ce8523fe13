"""One run per directory: a lock against a second trainer, and no silent mixing of runs.

- ``<run>/.lock`` holds the PID and host of the trainer using the directory (rank 0). A
  second trainer is refused; a lock whose PID is dead on this host is reclaimed.
- ``--resume never`` into a directory that already holds a run (``metrics.jsonl`` or
  checkpoints) is refused unless ``--overwrite``, which moves the old run's files into
  ``<run>.old-<UTC time>/`` (nothing is deleted) and starts a new run.
- ``--resume auto`` with checkpoints that are all incomplete or corrupt refuses, naming them;
  ``auto`` finding logs but no checkpoint at all (an attempt killed before its first save)
  moves those logs aside the same way and starts fresh.
- Which checkpoint resumes: the newest valid one at or before the ``latest`` pointer.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ernie_cpt.training import checkpoint as ckpt

log = logging.getLogger(__name__)

LOCK = ".lock"
RUN_FILES = ("metrics.jsonl", "eval.jsonl", "checkpoints")
KEEP_IN_PLACE = (LOCK, "train.log", "run.log")


class RunDirError(SystemExit):
    """A run directory the trainer refuses to use as asked (message for the user)."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def acquire_lock(run_dir: Path) -> Path:
    """Create ``run_dir/.lock`` for this process; refuse if a live trainer holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path, host = run_dir / LOCK, socket.gethostname()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None and time.time() - path.stat().st_mtime < 10:
                time.sleep(1)  # being written right now
                continue
            if holder is not None and (holder.get("host") != host or pid_alive(holder["pid"])):
                raise RunDirError(
                    f"{run_dir} is in use by another trainer (pid {holder['pid']} on "
                    f"{holder.get('host')}); if that process is gone, delete {path}"
                ) from None
            log.warning("reclaiming %s left by a trainer that is gone (%s)", path, holder)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"pid": os.getpid(), "host": host}, handle)
        return path
    raise RunDirError(f"could not take the lock {path}")


def release_lock(path: Path) -> None:
    """Remove the lock if this process holds it."""
    holder = _holder(path)
    if holder is not None and holder.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


@contextmanager
def locked(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Hold the run directory's lock for the duration (no-op when not ``enabled``)."""
    path = acquire_lock(run_dir) if enabled else None
    try:
        yield
    finally:
        if path is not None:
            release_lock(path)


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run's metrics or checkpoints."""
    root = run_dir / "checkpoints"
    has_checkpoints = root.is_dir() and any(ckpt.TAG_PATTERN.match(p.name) for p in root.iterdir())
    return (run_dir / "metrics.jsonl").exists() or has_checkpoints


def archive(run_dir: Path, names: tuple[str, ...] | None = None) -> Path:
    """Move the old run's files into ``<run_dir>.old-<time>``: ``names``, or everything but
    the lock and ``train.log`` (the log a ``compare`` harness appends to)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    suffix = 0
    while target.exists():
        suffix += 1
        target = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{suffix}")
    target.mkdir()
    for entry in run_dir.iterdir():
        wanted = entry.name in names if names is not None else entry.name not in KEEP_IN_PLACE
        if wanted:
            entry.rename(target / entry.name)
    log.warning("moved the previous run in %s to %s", run_dir, target)
    return target


def choose_checkpoint(run_dir: Path, mode: str, overwrite: bool) -> Path | None:
    """The checkpoint to resume (None: start fresh), applying the one-run-per-directory rules.

    Rank 0 only (it may move files). ``mode`` is ``auto``, ``must`` or ``never``.
    """
    if mode not in ("auto", "must", "never"):
        raise ValueError(f"--resume must be auto, must or never, got {mode!r}")
    root = run_dir / "checkpoints"
    if overwrite:
        if mode == "must":
            raise RunDirError("--overwrite starts a new run; it cannot be used with --resume must")
        if holds_run(run_dir):
            archive(run_dir)
        return None
    found = None
    if mode != "never":
        ckpt.clean_partial(root)
        found = ckpt.newest_valid(root)
    if found is not None:
        return found
    bad = [p.name for p in ckpt.candidates(root)]
    if mode == "must":
        raise RunDirError(f"--resume must: no valid checkpoint under {root}" + _named(bad))
    if bad and mode == "auto":
        raise RunDirError(
            f"--resume auto: every checkpoint under {root} is incomplete or corrupt "
            f"({', '.join(bad)}); nothing was changed. Repair or remove them, or start a new "
            "run with --resume never --overwrite (the old files are kept aside)"
        )
    if holds_run(run_dir) and mode == "never":
        raise RunDirError(
            f"{run_dir} already holds a run (metrics.jsonl or checkpoints): resume it with "
            "--resume auto, or pass --overwrite to move it aside and start a new run"
        )
    if holds_run(run_dir):  # auto, and an earlier attempt wrote logs but no checkpoint
        archive(run_dir, RUN_FILES)
    log.info("no checkpoint under %s: starting fresh", root)
    return None


def _named(bad: list[str]) -> str:
    return f" (unusable: {', '.join(bad)})" if bad else ""
