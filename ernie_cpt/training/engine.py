"""DeepSpeed: the process group and the engine, from our train section.

One code path on CPU and GPU: on a machine without CUDA, DeepSpeed's CPU accelerator and
the gloo backend run the same engine (ZeRO 0-3, fp32 or bf16). A single process started
without a launcher gets the rendezvous variables it needs.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ernie_cpt.config import TrainConfig

log = logging.getLogger(__name__)

LR_DECAYS = ("linear", "cosine", "constant")
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stale_build_locks() -> list[Path]:
    """Lock files of torch C++-extension builds (DeepSpeed compiles ops on first use).

    A process killed while compiling leaves its lock behind, and every later build of that
    op then waits on it forever, silently. Returned so the caller can say so.
    """
    from torch.utils.cpp_extension import get_default_build_root

    # torch builds in $TORCH_EXTENSIONS_DIR/<op>, else <default root>/py311_cpu/<op>
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    return sorted([*root.glob("*/lock"), *root.glob("*/*/lock")]) if root.is_dir() else []


def init_distributed() -> tuple[int, int]:
    """Join (or form, single process) the process group; returns (rank, world size)."""
    import deepspeed
    import torch.distributed as dist

    for lock in stale_build_locks():
        log.warning(
            "%s exists: if no other process is compiling this DeepSpeed op right now, a killed "
            "build left it and the next compile will wait forever; delete it",
            lock,
        )

    if "RANK" not in os.environ:  # not started by a launcher: a group of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    return dist.get_rank(), dist.get_world_size()


def device() -> torch.device:
    """The accelerator device of this rank (CPU where there is none)."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu":
        return torch.device("cpu")
    return torch.device(accelerator.device_name(int(os.environ.get("LOCAL_RANK", "0"))))


def lr_at(update: int, train: TrainConfig, total_steps: int) -> float:
    """The learning rate of optimizer update ``update`` (0-based), a pure function of it.

    Linear warm-up over ``warmup`` updates (update u uses lr * (u + 1) / warmup: the first
    update already learns, the warmup-th reaches the peak), then linear decay towards
    0 at ``total_steps``, cosine decay to ``train.min_lr``, or constant. DeepSpeed's own
    Warmup* schedulers start one iteration early and step after each update, so the first two
    updates of a run ran at lr 0; this one does not.
    """
    if train.lr_decay not in LR_DECAYS:
        raise ValueError(
            f"train.lr_decay must be linear, cosine or constant, got {train.lr_decay!r}"
        )
    warmup = min(train.warmup_steps, max(total_steps - 1, 0))
    if update < warmup:
        return train.lr * (update + 1) / warmup
    span = max(total_steps - warmup, 1)
    done = min(update - warmup, span) / span  # 0 at the peak, 1 at total_steps
    if train.lr_decay == "linear":
        return train.lr * (1.0 - done)
    if train.lr_decay == "cosine":
        return train.min_lr + (train.lr - train.min_lr) * (1.0 + math.cos(math.pi * done)) / 2
    return train.lr  # constant


def lr_scheduler(train: TrainConfig, total_steps: int) -> Any:
    """A factory ``optimizer -> LambdaLR`` following ``lr_at``; DeepSpeed steps it once per
    update (not per micro-batch, and not on a skipped update) and saves its position."""

    def multiplier(update: int) -> float:
        return lr_at(update, train, total_steps) / train.lr if train.lr else 0.0

    return partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=multiplier)


def deepspeed_config(train: TrainConfig, total_steps: int, world_size: int = 1) -> dict[str, Any]:
    """The DeepSpeed JSON config generated from our train section."""
    if train.precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"train.precision must be fp32, bf16 or fp16, got {train.precision!r}")
    if train.precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("train.precision=fp16 needs a GPU; use bf16 or fp32 on CPU")
    if train.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"train.zero_stage must be 0-3, got {train.zero_stage}")
    lr_at(0, train, total_steps)  # an unknown lr_decay is refused before any engine exists
    return {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "train_batch_size": train.micro_batch_size * train.gradient_accumulation_steps * world_size,
        "gradient_clipping": train.gradient_clipping,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": train.lr,
                "betas": [train.adam_beta1, train.adam_beta2],
                "eps": train.adam_eps,
                "weight_decay": train.weight_decay,
                # torch's AdamW: no 76-second fused-op compile on CPU, same maths.
                "torch_adam": not torch.cuda.is_available(),
            },
        },
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {"enabled": train.precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and LayerNorm weights."""
    decay, no_decay, seen = [], [], set()
    for name, param in module.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        # Loss-weighting parameters (log-variances, weight logits) are not decayed either.
        skip = name.endswith(NO_DECAY) or name.startswith("weightings.")
        (no_decay if skip else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_engine(
    module: nn.Module,
    train: TrainConfig,
    total_steps: int,
    world_size: int,
    trust_checkpoint: bool = False,
) -> Any:
    """``deepspeed.initialize`` on ``module``; returns the engine (optimizer and LR inside).

    The engine's checkpoint loader is replaced by ``checkpoint.safe_load``: DeepSpeed's own
    unpickles whatever a checkpoint file holds (``weights_only=False``).
    """
    import deepspeed

    from ernie_cpt.training.checkpoint import make_loads_safe

    config = deepspeed_config(train, total_steps, world_size)
    engine, *_ = deepspeed.initialize(
        model=module,
        model_parameters=parameter_groups(module, train.weight_decay),
        config=config,
        lr_scheduler=lr_scheduler(train, total_steps),
    )
    make_loads_safe(engine, trust_checkpoint)
    single_process_fast_paths(engine, world_size)
    return engine


def single_process_fast_paths(engine: Any, world_size: int) -> None:
    """One process at ZeRO 0 with a plain fp32 torch optimizer: two of DeepSpeed's per-step
    routines done with fewer operations, with the same bits on CPU (tested; golden losses
    equal; on a GPU the fused norm kernel may round the clipping norm's last bit differently).

    - The gradient all-reduce at each accumulation boundary flattens every gradient into a
      buffer, all-reduces it over one rank and copies it back, an identity costing ~3% of a
      CPU step of the demo model. What it does that matters is kept: a parameter without a
      gradient (an idle head) gets a zero one, as every rank gives it before reducing, so
      AdamW still moves it by its moments and decay, as in a multi-process run.
    - Gradient clipping computes each gradient's norm and scales each gradient in its own
      operation (two per parameter); here one ``foreach`` operation each, same arithmetic.

    ZeRO 1-3 and DeepSpeed's bf16/fp16 optimizers hook their own work into those calls."""
    plain = isinstance(engine.optimizer, torch.optim.Optimizer)
    if world_size != 1 or engine.zero_optimization_stage() != 0 or not plain:
        return

    def fill_missing_gradients(*args: Any, **kwargs: Any) -> None:
        if engine.is_gradient_accumulation_boundary():
            for parameter in engine.module.parameters():
                if parameter.requires_grad and parameter.numel() and parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)

    def clip_gradients() -> None:
        clip_lone_gradients(engine.module.parameters(), engine.gradient_clipping())

    engine.allreduce_gradients = fill_missing_gradients
    engine.clip_fp32_gradients = clip_gradients


def clip_lone_gradients(parameters: Any, max_norm: float) -> torch.Tensor:
    """DeepSpeed's ``clip_grad_norm_`` (L2, no model parallelism) for one process, with the
    same operations in the same order, per-tensor ones fused into ``foreach`` calls."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norms = torch._foreach_norm([g.detach().float() for g in grads], 2.0)
    total = torch.stack(norms).pow(2.0).sum().float().pow(1.0 / 2.0)
    coef = torch.tensor([float(max_norm)], device=total.device) / (total + 1e-6)
    coef = torch.min(torch.tensor([1.0], device=total.device), coef)
    torch._foreach_mul_(grads, coef.reshape(()))  # the (1,) factor DeepSpeed multiplies by
    return total


def _skip_patches(optimizer: Any) -> dict[str, Any]:
    """Instance attributes that make ``optimizer`` take its own overflow path: no update."""
    if hasattr(optimizer, "check_grad_overflow") and hasattr(optimizer, "has_overflow"):
        # ZeRO 1-2: its step() checks overflow first and, on overflow, clears the gradients
        return {"check_grad_overflow": True, "has_overflow": lambda *args, **kwargs: True}
    if hasattr(optimizer, "_overflow_check_and_loss_scale_update"):  # ZeRO 3

        def overflowed(update_scale: bool = True) -> bool:
            optimizer.overflow = True
            return optimizer._loss_scale_update_and_overflow_cleanup() if update_scale else True

        return {"_overflow_check_and_loss_scale_update": overflowed}

    def no_step(*args: Any, **kwargs: Any) -> None:  # ZeRO 0: torch optimizer or BF16_Optimizer
        optimizer.overflow = True
        for clear in ("clear_hp_grads", "clear_lp_grads"):
            if hasattr(optimizer, clear):
                getattr(optimizer, clear)()

    return {"step": no_step}


def skip_update(engine: Any) -> None:
    """The accumulation boundary's ``engine.step()`` without an update: gradients are dropped
    and weights, Adam moments and the LR schedule stay as they were (DeepSpeed's own overflow
    path, counted in ``engine.skipped_steps``). Every rank must call it together."""
    optimizer = engine.optimizer
    had_overflow = "overflow" in vars(optimizer) or hasattr(type(optimizer), "overflow")
    patches = _skip_patches(optimizer)
    saved = {k: vars(optimizer)[k] for k in patches if k in vars(optimizer)}
    vars(optimizer).update(patches)
    try:
        engine.step()
    finally:
        for key in patches:
            vars(optimizer).pop(key, None)
        vars(optimizer).update(saved)
        if had_overflow:
            optimizer.overflow = False
        else:
            vars(optimizer).pop("overflow", None)


def all_reduce_sum(values: Iterable[float]) -> list[float]:
    """Sum floats over ranks (a no-op for one process)."""
    import torch.distributed as dist

    values = list(values)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device())
    dist.all_reduce(tensor)
    return tensor.tolist()
