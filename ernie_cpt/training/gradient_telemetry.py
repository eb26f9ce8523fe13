"""Gradient telemetry: per-task gradient norms on the shared encoder and their pairwise cosines.

Every ``train.grad_telemetry_every`` steps, each task active in the stage gets one fixed
held-out batch; ``torch.autograd.grad`` of its mean loss w.r.t. the shared parameters gives
one gradient vector per task (nothing is written into ``.grad``, no dropout is drawn, so
training is unchanged and resume stays exact). ``scope`` "last_layer" (default) uses the last
transformer layer (cheap: autograd only goes that deep), "encoder" every encoder parameter.
Needs full (unpartitioned) parameters: ZeRO stage 0-2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

SCOPES = ("last_layer", "encoder")


def shared_parameters(model: nn.Module, scope: str) -> list[nn.Parameter]:
    """The shared encoder parameters telemetry differentiates against (with a sharing
    architecture, the encoder holds only the shared lower layers: its last one is the
    last layer every task shares)."""
    if scope == "last_layer":
        return [p for p in model.encoder.encoder.layer[-1].parameters() if p.requires_grad]
    if scope == "encoder":
        return [p for p in model.encoder.parameters() if p.requires_grad]
    raise ValueError(f"train.grad_telemetry_scope must be one of {SCOPES}, got {scope!r}")


def task_gradient(
    module: nn.Module, task: str, batch: Mapping[str, Tensor], params: Sequence[nn.Parameter]
) -> Tensor:
    """Flattened d(mean loss of ``task``)/d(params) on ``batch`` (float32)."""
    model = module.model
    with torch.enable_grad():
        encoded = model(
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            batch["task_type_ids"],
            [task],
        )
        loss = module.tasks[task].loss(model.heads[task], encoded.for_task(task), batch).mean()
        grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).float().reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


def norms_and_cosines(
    gradients: Mapping[str, Tensor],
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """L2 norm of each task's gradient and the cosine similarity of every pair."""
    norms = {task: float(g.norm()) for task, g in gradients.items()}
    cosines: dict[str, dict[str, float]] = {}
    for a, ga in gradients.items():
        cosines[a] = {}
        for b, gb in gradients.items():
            denominator = norms[a] * norms[b]
            cosines[a][b] = float(torch.dot(ga, gb) / denominator) if denominator > 0 else 0.0
    return norms, cosines


def gradient_telemetry(
    module: nn.Module, batches: Mapping[str, Mapping[str, Tensor]], scope: str
) -> dict[str, Any]:
    """{"norms": {task: norm}, "cosine": {task: {task: cos}}} over the given tasks' batches."""
    params = shared_parameters(module.model, scope)
    was_training = module.training
    module.train(False)  # no dropout: telemetry draws no random numbers
    try:
        gradients = {
            task: task_gradient(module, task, batch, params) for task, batch in batches.items()
        }
    finally:
        module.train(was_training)
    norms, cosines = norms_and_cosines(gradients)
    return {"norms": norms, "cosine": cosines}
