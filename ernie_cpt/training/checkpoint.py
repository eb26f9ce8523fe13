"""Checkpoints written atomically and verified before use.

Layout of ``<run>/checkpoints``::

    step-00000120/            DeepSpeed engine state (model, optimizer, LR schedule) +
        trainer_state.json    step, stage, budgets consumed, data cursors, task ids, config
        rng-rank<r>.pt        python / numpy / torch RNG states of each rank
        model.safetensors     consolidated weights (rank 0), read by ``export``
        manifest.json         sha256 and size of every file above
    latest                    name of the newest complete checkpoint

A checkpoint is written into ``.tmp-step-...``, its manifest written last, then renamed;
``latest`` is replaced with ``os.replace``. On resume each candidate at or before the step
``latest`` names is verified against its manifest, newest first; a partial or corrupt one is
named in the log and skipped. A write error (disk full) removes the partial checkpoint and
stops with one line naming the path and the free space; ``latest`` still names the previous
checkpoint. Weights that are not finite are never written.

Files are read with ``torch.load(weights_only=True)`` (DeepSpeed's loader included, see
``make_loads_safe``) allowing three DeepSpeed types besides tensors and plain values; the
manifest detects accidents, not attackers, so nothing in a checkpoint is ever unpickled.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ernie_cpt.training.faults import fault_point

log = logging.getLogger(__name__)


class UnsafeCheckpointError(SystemExit):
    """A checkpoint file that only full unpickling could read (refused)."""


class CheckpointWriteError(SystemExit):
    """A checkpoint could not be written (disk full, permissions): one line for the user."""


TAG_PATTERN = re.compile(r"^step-(\d{8})$")
MANIFEST = "manifest.json"
STATE = "trainer_state.json"
WEIGHTS = "model.safetensors"


def tag_for(step: int) -> str:
    """Directory name of the checkpoint taken after ``step`` optimizer steps."""
    return f"step-{step:08d}"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    """Record size and sha256 of every file under ``directory`` (written last)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {
        str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in files
    }
    atomic_write_text(directory / MANIFEST, json.dumps({"files": entries}, indent=1))


def verify(directory: Path) -> str | None:
    """None if the checkpoint is complete and intact, else the reason it is not."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return "no manifest (checkpoint incomplete)"
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as error:
        return f"unreadable manifest: {error}"
    for name, expected in entries.items():
        path = directory / name
        if not path.is_file():
            return f"missing file {name}"
        if path.stat().st_size != expected["size"]:
            return f"size mismatch in {name}"
        if sha256_file(path) != expected["sha256"]:
            return f"checksum mismatch in {name}"
    if STATE not in entries:
        return f"no {STATE}"
    return None


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file via a temporary sibling and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """Every RNG a rank uses, in a form ``torch.load(weights_only=True)`` accepts."""
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def candidates(root: Path) -> list[Path]:
    """Complete-looking checkpoint directories, newest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and TAG_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def pointer_step(root: Path) -> int | None:
    """The step the ``latest`` pointer names (None without a usable pointer)."""
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8", errors="replace").strip()
    match = TAG_PATTERN.match(name)
    if match is None:
        log.warning("ignoring checkpoint pointer %s: %r names no checkpoint", pointer, name)
        return None
    return int(match.group(1))


def newest_valid(root: Path) -> Path | None:
    """The newest checkpoint at or before the ``latest`` pointer that passes ``verify``.

    Checkpoints after the pointer are not this run's newest (a save interrupted before the
    pointer moved, or files from elsewhere) and are skipped; bad ones are logged and skipped.
    """
    limit = pointer_step(root)
    for directory in candidates(root):
        if limit is not None and int(directory.name.split("-")[1]) > limit:
            log.warning("skipping checkpoint %s: after the latest pointer", directory)
            continue
        problem = verify(directory)
        if problem is None:
            return directory
        log.warning("skipping checkpoint %s: %s", directory, problem)
    return None


def read_state(directory: Path) -> dict[str, Any]:
    """The trainer state saved with a checkpoint."""
    return json.loads((directory / STATE).read_text())


def load_rng(directory: Path, rank: int) -> dict[str, Any]:
    """This rank's RNG states (tensors and plain values only: weights_only)."""
    return safe_load(directory / f"rng-rank{rank}.pt")


def deepspeed_safe_globals() -> list[Any]:
    """The few non-tensor types DeepSpeed writes into its checkpoint files (plain data)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str | Path, map_location: Any = None, trust: bool = False) -> Any:
    """``torch.load(weights_only=True)``; a file needing full unpickling is refused by name.

    ``trust`` (``--trust-checkpoint``) unpickles anyway, loudly: only for files you made.
    """
    if trust:
        log.warning("--trust-checkpoint: UNPICKLING %s; this runs any code the file holds", path)
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(deepspeed_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        detail = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), "")
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it holds objects that only full unpickling can read, "
            f"which can run arbitrary code ({detail or 'not a weights-only file'}). If you made "
            "this file yourself, --trust-checkpoint loads it anyway"
        ) from None


def make_loads_safe(engine: Any, trust: bool = False) -> None:
    """Route every file DeepSpeed's ``load_checkpoint`` reads through ``safe_load``."""
    engine.checkpoint_engine.load = functools.partial(safe_load, trust=trust)


def save_rng(directory: Path, rank: int) -> None:
    """Write this rank's RNG states."""
    torch.save(rng_state(), directory / f"rng-rank{rank}.pt")


def finalize(
    tmp: Path,
    root: Path,
    step: int,
    state: dict[str, Any],
    keep: int,
    protected: Sequence[int] = (),
) -> Path:
    """Rank 0: write state + manifest, rename into place, move the pointer, prune old ones.

    The newest ``keep`` checkpoints stay, plus those taken after a step in ``protected``
    (stage ends: each stage's final model stays available for evaluation).
    """
    atomic_write_text(tmp / STATE, json.dumps(state, indent=1))
    write_manifest(tmp)
    final = root / tag_for(step)
    if final.exists():  # a previous attempt at this step (e.g. after a resume): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", final.name)
    kept = {tag_for(s) for s in protected}
    for old in candidates(root)[max(keep, 1) :]:
        if old.name not in kept:
            shutil.rmtree(old, ignore_errors=True)
    return final


def clean_partial(root: Path) -> None:
    """Remove temporary directories left by a process killed while saving."""
    if root.is_dir():
        for stale in root.glob(".tmp-step-*"):
            log.warning("removing partial checkpoint %s", stale)
            shutil.rmtree(stale, ignore_errors=True)


def save(
    engine: Any,
    root: Path,
    step: int,
    rank: int,
    state: dict[str, Any],
    keep: int,
    protected: Sequence[int] = (),
) -> None:
    """A checkpoint after ``step`` steps (collective: every rank calls it).

    ``state`` is the trainer state written as ``trainer_state.json`` (by rank 0).
    """
    import torch.distributed as dist

    tmp = root / f".tmp-{tag_for(step)}"
    weights = consolidated_state_dict(engine)
    check_finite(weights, step)  # ZeRO 0-2: every rank holds the weights and refuses together
    try:
        engine.save_checkpoint(str(root), tag=tmp.name, save_latest=False)
        save_rng(tmp, rank)
        fault_point("in_save", step)
        dist.barrier()
        if rank == 0:
            save_weights(weights, tmp / WEIGHTS)
            finalize(tmp, root, step, state, keep, protected)
    except (OSError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and not is_write_error(error):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(write_error_message(tmp, error)) from None
    dist.barrier()


def check_finite(weights: Mapping[str, Any] | None, step: int) -> None:
    """Refuse to checkpoint weights holding NaN or infinity (names the first such tensor)."""
    for key, tensor in (weights or {}).items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            if not bool(torch.isfinite(tensor).all()):
                raise SystemExit(
                    f"not writing the checkpoint of step {step}: parameter {key} is not "
                    "finite; the previous checkpoint is the newest valid one"
                )


def is_write_error(error: RuntimeError) -> bool:
    """Whether torch's zip writer reported a failed write (it wraps ENOSPC this way)."""
    text = str(error).lower()
    return "unexpected pos" in text or "write" in text


def write_error_message(path: Path, error: BaseException) -> str:
    """One line naming the path, the error and the free space of its file system."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = f"{shutil.disk_usage(probe).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    reason = os.strerror(error.errno) if getattr(error, "errno", None) else str(error)
    return (
        f"cannot write checkpoint {path}: {reason} ({free} on that file system); "
        "the previous checkpoint is still the newest valid one"
    )


def consolidated_state_dict(engine: Any) -> dict[str, torch.Tensor] | None:
    """Full model weights on rank 0 (gathered from all ranks under ZeRO-3)."""
    if engine.zero_optimization_stage() == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    return engine.module.state_dict()


def save_weights(state: Mapping[str, torch.Tensor] | None, path: Path) -> None:
    """Save weights as safetensors, storing tied (shared) tensors once.

    Non-tensor entries (loss weightings' ``_extra_state`` history) are left to the engine
    checkpoint; this file is for export and inspection.
    """
    from safetensors.torch import save_file

    unique, seen = {}, set()
    for key, tensor in (state or {}).items():
        if not isinstance(tensor, torch.Tensor):
            continue
        if tensor.data_ptr() in seen and tensor.numel() > 0:
            continue
        seen.add(tensor.data_ptr())
        unique[key] = tensor.detach().to("cpu", torch.float32).contiguous()
    save_file(unique, str(path))
