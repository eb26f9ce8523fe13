"""Micro-batches prepared ahead of the device, in a background thread.

Preparing a micro-batch (read the examples, collate, mask, attach the stage's token tasks'
labels, pin) is a pure function of (task, the stage's tasks, the stream cursor): its random
draws are seeded by the cursor, not by the step. So the next batches of every task of the
stage can be built before the schedule draws them, while the device works on the current
step, and a resumed run, which starts from the saved cursors with nothing prepared, still
reads exactly the same batches.

The streams' own cursors move only when a batch is *taken* (``InputPipeline.take``), so a
checkpoint saves the position of the last batch trained on, never of a prepared one. A
prepared batch whose key no longer matches (the stage changed its tasks) is dropped and
built again. One thread is enough: collation is mostly numpy/torch work that releases the
GIL, and it only has to keep up with one micro-batch per forward.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

Cursor = tuple[int, int]  # (epoch, position) of a TaskStream


@dataclass(frozen=True)
class Prepared:
    """One micro-batch on the host, ready to copy to the device."""

    batch: dict[str, torch.Tensor]  # collated columns, pinned when CUDA is used
    names: list[str]  # the drawn task, then the attached tasks whose labels it carries
    tokens: int  # non-padding input tokens (counted on the host: no device sync)
    after: Cursor  # the stream cursor after this batch


Build = Callable[[str, tuple[str, ...], Cursor], Prepared]


class InputPipeline:
    """Per task, up to ``depth`` micro-batches built ahead by one background thread."""

    def __init__(self, streams: Mapping[str, Any], build: Build, depth: int) -> None:
        self.streams = streams
        self.build = build
        self.depth = depth
        self.pending: dict[str, deque[tuple[tuple[Any, ...], Future[Prepared]]]] = {}
        self.executor = (
            ThreadPoolExecutor(1, thread_name_prefix="ernie-input") if depth > 0 else None
        )

    def take(self, task: str, stage_tasks: tuple[str, ...]) -> Prepared:
        """The next micro-batch of ``task`` (built now if none is ready); moves its stream,
        then queues more batches of every task of the stage."""
        stream = self.streams[task]
        cursor = (stream.epoch, stream.position)
        queue = self.pending.setdefault(task, deque())
        prepared = None
        if queue and queue[0][0] == (stage_tasks, cursor):
            prepared = queue.popleft()[1].result()
        else:  # nothing built for this cursor and stage: drop what is queued, build now
            self.drop(task)
            prepared = self.build(task, stage_tasks, cursor)
        stream.epoch, stream.position = prepared.after
        for name in (task, *stage_tasks):
            self.fill(name, stage_tasks)
        return prepared

    def fill(self, task: str, stage_tasks: tuple[str, ...]) -> None:
        """Queue batches of ``task`` until ``depth`` are pending (cursors chained by peek)."""
        if self.executor is None:
            return
        queue = self.pending.setdefault(task, deque())
        if queue and queue[0][0][0] != stage_tasks:
            self.drop(task)
        stream = self.streams[task]
        cursor = queue[-1][0][1] if queue else (stream.epoch, stream.position)
        if queue:
            cursor = stream.peek(cursor)[1]
        while len(queue) < self.depth:
            queue.append(
                ((stage_tasks, cursor), self.executor.submit(self.build, task, stage_tasks, cursor))
            )
            cursor = stream.peek(cursor)[1]

    def drop(self, task: str) -> None:
        """Forget the batches queued for ``task`` (cancelled when not started)."""
        for _, future in self.pending.pop(task, deque()):
            future.cancel()

    def close(self) -> None:
        """Stop the thread; queued batches are dropped (the cursors never counted them)."""
        for task in list(self.pending):
            self.drop(task)
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Copy a prepared batch to ``device``; non-blocking from pinned memory on CUDA."""
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}


def pin(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Page-locked copies of the batch when CUDA is used (so the copy can be asynchronous)."""
    if not torch.cuda.is_available():
        return batch
    return {k: v.pin_memory() for k, v in batch.items()}
