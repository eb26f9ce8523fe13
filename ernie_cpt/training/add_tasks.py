"""Adding tasks to a resumed run: move every parameter and its Adam moments, by name, from an
engine of the checkpoint's shape into an engine that has the new tasks' heads.

The checkpoint is loaded into an engine built like the old run (same tasks, same ZeRO stage);
each parameter's fp32 value and ``exp_avg`` / ``exp_avg_sq`` are read by name (DeepSpeed's
``safe_get_full_*`` at ZeRO 1-2 and with bf16, the torch optimizer's state at ZeRO 0 fp32)
and written into the new engine. Parameters that grew (the task-type embedding, when the new
task ids do not fit) keep their trained rows; new rows keep their fresh initialisation and
zero moments. New heads start fresh, with zero moments and the run's Adam step count; a
sharing architecture's new gates too, while a new task's column or own experts start from
the mean of the carried columns / shared experts (``warm_starts``). The
LR schedule and the engine's step counters continue where they were. ZeRO-3 is refused:
its parameters are partitioned at construction, before this could move them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

MOMENTS = ("exp_avg", "exp_avg_sq")


def _inner_optimizer(engine: Any) -> torch.optim.Optimizer:
    """The torch optimizer under DeepSpeed's wrappers."""
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def _link_optimizer_state(engine: Any) -> None:
    """Let DeepSpeed map each parameter to its fragment of the (now existing) Adam state."""
    link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None and any("exp_avg" in s for s in _inner_optimizer(engine).state.values()):
        link()


def read_parameter_states(engine: Any) -> tuple[dict[str, dict[str, Tensor]], float]:
    """({name: {"param", "exp_avg", "exp_avg_sq"}} on CPU in fp32, Adam step count)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    _link_optimizer_state(engine)
    inner = _inner_optimizer(engine)
    step = max((float(s["step"]) for s in inner.state.values() if "step" in s), default=0.0)
    states: dict[str, dict[str, Tensor]] = {}
    for name, param in engine.module.named_parameters():
        if hasattr(param, "_hp_mapping"):
            entry = {"param": safe_get_full_fp32_param(param)}
            entry.update({k: safe_get_full_optimizer_state(param, k) for k in MOMENTS})
        else:
            saved = inner.state.get(param, {})
            entry = {"param": param.detach(), **{k: saved.get(k) for k in MOMENTS}}
        states[name] = {
            k: v.detach().float().cpu().clone() for k, v in entry.items() if v is not None
        }
    return states, step


def fit(saved: Tensor, current: Tensor) -> Tensor | None:
    """``saved`` in ``current``'s shape: equal shapes as is, more rows (a grown embedding)
    with the extra rows taken from ``current``; None when they cannot match."""
    if saved.shape == current.shape:
        return saved
    if (
        saved.dim() == current.dim() == 2
        and saved.shape[1] == current.shape[1]
        and saved.shape[0] < current.shape[0]
    ):
        grown = current.detach().float().cpu().clone()
        grown[: saved.shape[0]] = saved
        return grown
    return None


def _ensure_adam_state(inner: torch.optim.Optimizer, step: float) -> None:
    """Create Adam's state for every parameter (torch does it lazily at the first step)."""
    for group in inner.param_groups:
        for param in group["params"]:
            state = inner.state[param]
            if "exp_avg" not in state:
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["step"] = torch.tensor(step, dtype=torch.float32)


def write_parameter_states(
    engine: Any, states: Mapping[str, Mapping[str, Tensor]], step: float
) -> list[str]:
    """Write saved parameters and moments into ``engine`` by name; returns the names kept fresh."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    inner = _inner_optimizer(engine)
    _ensure_adam_state(inner, step)
    _link_optimizer_state(engine)
    fresh = []
    for name, param in engine.module.named_parameters():
        saved = states.get(name)
        value = fit(saved["param"], param) if saved else None
        if value is None:
            fresh.append(name)
            continue
        zeros = torch.zeros(param.shape)
        moments = {k: fit(saved[k], zeros) if k in saved else zeros for k in MOMENTS}
        with torch.no_grad():
            param.copy_(value.to(param.device, param.dtype))
        if hasattr(param, "_hp_mapping"):
            safe_set_full_fp32_param(param, value.to(param.device))
            for key, moment in moments.items():
                safe_set_full_optimizer_state(param, moment.to(param.device), key)
        else:
            for key, moment in moments.items():
                inner.state[param][key].copy_(moment.to(param.device))
    return fresh


def warm_starts(
    states: Mapping[str, Mapping[str, Tensor]], names: list[str]
) -> dict[str, dict[str, Tensor]]:
    """New parameters of a sharing architecture that start from carried ones: a new task's
    column is the mean of the existing columns, its own experts the mean of the shared
    experts (``ernie_cpt.model.sharing.warm_start_sources``); zero moments."""
    from ernie_cpt.model.sharing import warm_start_sources

    out: dict[str, dict[str, Tensor]] = {}
    for name in names:
        sources = [] if name in states else warm_start_sources(name, states)
        if sources:
            out[name] = {"param": torch.stack([states[s]["param"] for s in sources]).mean(0)}
            log.info("new parameter %s starts as the mean of %d carried ones", name, len(sources))
    return out


def transfer(old_engine: Any, new_engine: Any) -> list[str]:
    """Move parameters, moments, LR position and step counters; returns fresh parameter names."""
    if new_engine.zero_optimization_stage() == 3:
        raise ValueError(
            "adding tasks to a resumed run needs ZeRO stage 0-2 (ZeRO-3 partitions parameters)"
        )
    states, step = read_parameter_states(old_engine)
    states.update(warm_starts(states, [n for n, _ in new_engine.module.named_parameters()]))
    fresh = write_parameter_states(new_engine, states, step)
    if old_engine.lr_scheduler is not None and new_engine.lr_scheduler is not None:
        new_engine.lr_scheduler.load_state_dict(old_engine.lr_scheduler.state_dict())
        for group, lr in zip(
            new_engine.optimizer.param_groups, new_engine.lr_scheduler.get_last_lr(), strict=True
        ):
            group["lr"] = lr
    new_engine.global_steps = old_engine.global_steps
    new_engine.global_samples = old_engine.global_samples
    log.info("carried %d parameters over; %d start fresh: %s", len(states), len(fresh), fresh)
    return fresh
