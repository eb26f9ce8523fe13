"""The loss-weighting contract, and the gradient helpers the methods share.

A method turns the losses of one step into one *surrogate* scalar. The trainer only ever
calls ``engine.backward(surrogate)``: DeepSpeed owns backward, gradient partitioning and
the optimizer step, so a method that changes gradients (PCGrad, GradNorm) does it through
the surrogate, with ``torch.autograd.grad`` on the shared *activation* (B, T, H) and never
on parameters, which ZeRO-3 partitions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


def loss_key(task: str) -> str:
    """The ``observe`` metrics key holding a task's mean loss of the step."""
    return f"{task}/loss"


def kpi_key(task: str) -> str:
    """The ``observe`` metrics key holding a task's KPI in (0, 1), higher is better."""
    return f"{task}/kpi"


@runtime_checkable
class LossWeighting(Protocol):
    """What the trainer needs from a loss-balancing method (every one is an nn.Module)."""

    tasks: tuple[str, ...]

    def combine(
        self, losses: Mapping[str, Tensor], shared: Tensor | None, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """Surrogate scalar whose backward gives the prescribed gradient, and weights used.

        ``losses``: task -> scalar mean loss of the tasks present this step, all computed in
        one forward pass from ``shared`` (the encoder output the heads consumed, part of
        their autograd graph; None is allowed when a method does not need it).
        """
        ...

    def observe(self, metrics: Mapping[str, float], step: int) -> None:
        """After each optimizer step: ``loss_key(task)`` / ``kpi_key(task)`` -> value."""
        ...

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """nn.Module's, including non-tensor history through get_extra_state."""
        ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any:
        """nn.Module's."""
        ...


class WeightingModule(nn.Module):
    """Plumbing shared by the methods: the task list, input checks, ``combine`` -> forward.

    Each method declares ``Settings``, a frozen dataclass of its options (built from the
    config by ``schedules.options.build_settings``), and is constructed as
    ``Method(tasks, settings)``.

    ``combine`` goes through ``__call__`` on purpose: ZeRO-3 gathers a module's partitioned
    parameters (uncertainty's log-variances, GradNorm's weights) only in its forward hooks.
    """

    Settings: ClassVar[type]

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        if isinstance(tasks, str) or not tasks:
            raise ValueError(f"tasks must be a non-empty sequence of names, got {tasks!r}")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be unique, got {list(tasks)}")
        self.tasks = tuple(tasks)
        self.task_index = {task: i for i, task in enumerate(self.tasks)}

    def combine(
        self, losses: Mapping[str, Tensor], shared: Tensor | None, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """See ``LossWeighting.combine``; losses are reordered into the run's task order."""
        unknown = [task for task in losses if task not in self.task_index]
        if unknown or not losses:
            raise ValueError(f"losses must name 1..n of {list(self.tasks)}, got {list(losses)}")
        ordered = {task: losses[task] for task in self.tasks if task in losses}
        return self(ordered, shared, step)

    def observe(self, metrics: Mapping[str, float], step: int) -> None:
        """Methods without history ignore metrics."""

    def forward(
        self, losses: dict[str, Tensor], shared: Tensor | None, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """Each method's rule; ``losses`` is non-empty and in task order."""
        raise NotImplementedError


def weighted_sum(losses: Mapping[str, Tensor], weights: Mapping[str, Tensor | float]) -> Tensor:
    """sum_i w_i L_i over the tasks in ``losses``."""
    return torch.stack([weights[task] * loss.float() for task, loss in losses.items()]).sum()


def shared_gradients(losses: Sequence[Tensor], shared: Tensor | None) -> Tensor:
    """Row i = dL_i/d(shared), flattened, fp32, detached: shape (n, B*T*H).

    Keeps the graph (``retain_graph``) for the trainer's backward of the surrogate. Only the
    heads' part of the graph is traversed, so the cost is n backward passes through heads.
    """
    if shared is None or not shared.requires_grad:
        raise ValueError("this method needs `shared`: the encoder output the heads consumed")
    rows = []
    for loss in losses:
        (grad,) = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        if grad is None:  # e.g. ZeRO-3's hooks replaced `shared` inside a module call
            raise ValueError(
                "a task loss does not depend on `shared`: pass the tensor the heads consumed"
            )
        rows.append(grad.detach().float().flatten())
    return torch.stack(rows)


def redirect_shared_gradient(shared: Tensor, current: Tensor, wanted: Tensor) -> Tensor:
    """A scalar whose backward adds (wanted - current) to the gradient reaching ``shared``.

    Added to sum_i L_i (whose gradient at ``shared`` is ``current``), the encoder receives
    ``wanted`` while the heads, which do not lie between ``shared`` and this term, keep
    their ordinary dL_i/d(theta_head). ``current``/``wanted`` may be flattened. The term's
    value is 0, so the surrogate still reads as the loss.
    """
    correction = (wanted - current).detach().reshape(shared.shape).to(shared.dtype)
    term = (shared * correction).sum().float()
    return term - term.detach()
