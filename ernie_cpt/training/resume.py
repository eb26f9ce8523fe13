"""Resume compatibility: whether a config (and world size) may resume a checkpoint.

Which checkpoint resumes a run is ``run_dir.choose_checkpoint``'s decision.

A checkpoint can be resumed by a config that agrees with it on every key in ``RESUME_KEYS``
(and on the tokenizer's vocabulary). Tasks may be added at the end of a stage when the stages
already trained are unchanged; their heads start fresh while every existing parameter keeps
its weights and Adam moments (``add_tasks.transfer``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ernie_cpt.config import RunConfig, diff_configs, flatten
from ernie_cpt.data.prepare import PreparedData
from ernie_cpt.training.add_tasks import transfer
from ernie_cpt.training.build import build_module
from ernie_cpt.training.engine import build_engine
from schedules import Schedule

log = logging.getLogger(__name__)

# Keys that must match between a checkpoint and the config resuming it.
RESUME_KEYS = (
    "model",
    "tokenizer",
    "data.corpus",
    "data.max_seq_length",
    "data.seed",
    "data.sentence_splitter",  # other sentences: other examples, cursors meaningless
    "tasks",
    "schedule",
    "train.micro_batch_size",
    "train.gradient_accumulation_steps",
    "train.zero_stage",
    "train.precision",
    "train.seed",
    "train.combine_token_tasks",
    "train.bucket_size",  # which examples form the next batches
    "sharing",
)


def added_tasks(saved: Mapping[str, Any], config: RunConfig) -> list[str]:
    """Tasks the config adds to a checkpoint's run (the old ones must all still be there)."""
    old = list(saved["config"]["tasks"])
    missing = [t for t in old if t not in config.tasks]
    if missing:
        raise SystemExit(f"cannot resume: the config drops tasks of the checkpoint: {missing}")
    return [t for t in config.tasks if t not in old]


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def resume_relevant(tree: Mapping[str, Any], ignored: tuple[str, ...]) -> dict[str, Any]:
    """The flattened config keys under ``RESUME_KEYS``, minus those under ``ignored``."""
    return {
        k: v
        for k, v in flatten(tree).items()
        if any(_under(k, p) for p in RESUME_KEYS) and not any(_under(k, p) for p in ignored)
    }


def check_world_size(saved: Mapping[str, Any], world_size: int) -> None:
    """Refuse a checkpoint written by another number of processes.

    Its data cursors are per rank and its global batch is per-rank batch x ranks: resuming
    with another world size would repeat or skip examples and change the batch.
    """
    old = saved.get("world_size")
    if old is not None and old != world_size:
        raise SystemExit(
            f"cannot resume: the checkpoint was written by {old} processes and this run has "
            f"{world_size}; resume with {old} processes"
        )


def check_compatible(
    saved: Mapping[str, Any], config: RunConfig, data: PreparedData, added: list[str]
) -> None:
    """Refuse to resume with a config that changes what the checkpoint means.

    With ``added`` tasks, the new tasks' options and the schedule may differ (the schedule
    is then checked by ``check_schedule_prefix``).
    """
    ignored = ("schedule", *(f"tasks.{t}" for t in added)) if added else ()
    differing = diff_configs(
        resume_relevant(saved["config"], ignored), resume_relevant(config.to_dict(), ignored)
    )
    if saved.get("tokenizer_fingerprint") != data.tokenizer_fingerprint:
        differing.append("tokenizer (vocabulary differs)")
    if differing:
        raise SystemExit(
            "cannot resume: the config differs from the checkpoint's in: " + ", ".join(differing)
        )


def check_schedule_prefix(old: Schedule, new: Schedule, step: int) -> None:
    """Adding tasks: ``step`` ends a stage of both schedules, and the stages so far agree."""
    if step not in old.boundaries or step not in new.boundaries:
        raise SystemExit(
            f"cannot add tasks at step {step}: resume from the end of a stage "
            f"(old stages end at {old.boundaries[1:]}, new at {new.boundaries[1:]})"
        )
    done = old.boundaries.index(step)
    before = [s.to_dict() for s in old.stages[:done]]
    after = [s.to_dict() for s in new.stages[:done]]
    if before != after:
        raise SystemExit(
            "cannot add tasks: the new schedule changes stages already trained "
            f"(old {before}, new {after}); keep them and append stages"
        )


def load_with_added_tasks(
    config: RunConfig,
    data: PreparedData,
    saved: Mapping[str, Any],
    checkpoint: Path,
    engine: Any,
    trust_checkpoint: bool = False,
) -> None:
    """Load the checkpoint into an engine of the old shape, then move its state into ``engine``."""
    import torch.distributed as dist

    old_schedule = Schedule.from_dict(saved["schedule"])
    rows = max(saved["train_state"]["task_ids"].values()) + 1
    module = build_module(config, data, list(saved["config"]["tasks"]), old_schedule, rows)
    old_engine = build_engine(
        module, config.train, old_schedule.total_steps, dist.get_world_size(), trust_checkpoint
    )
    old_engine.load_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
    transfer(old_engine, engine)
