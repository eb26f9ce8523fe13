"""Loss-balancing methods for multi-task steps, one file each (LibMTL style).

Registry key = file stem = the config string. Every method is an ``nn.Module`` that lives
inside the DeepSpeed-wrapped model (learnable weights are optimised and checkpointed with
it) and returns a surrogate scalar for ``engine.backward``; see ``base.LossWeighting``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ernie_cpt.training.weighting.base import LossWeighting, WeightingModule, kpi_key, loss_key
from ernie_cpt.training.weighting.dtp import DynamicTaskPrioritization
from ernie_cpt.training.weighting.dwa import DynamicWeightAverage
from ernie_cpt.training.weighting.famo import FAMO
from ernie_cpt.training.weighting.fixed import FixedWeighting
from ernie_cpt.training.weighting.gradnorm import GradNorm
from ernie_cpt.training.weighting.pcgrad import PCGrad
from ernie_cpt.training.weighting.rlw import RandomLossWeighting
from ernie_cpt.training.weighting.uncertainty import UncertaintyWeighting
from schedules import options

WEIGHTINGS: dict[str, type[WeightingModule]] = {
    "fixed": FixedWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
    "gradnorm": GradNorm,
    "dtp": DynamicTaskPrioritization,
    "pcgrad": PCGrad,
    "rlw": RandomLossWeighting,
    "famo": FAMO,
}

# Methods that cannot run at ZeRO-3, and why. The others work there: they only weight the
# losses, and learnable weights are read inside the method's forward, where ZeRO-3 gathers
# them. These two need dL_i/d(shared) inside the model's forward, a backward pass through the
# heads before the trainer's: ZeRO-3 re-gathers a module's partitioned weights for backward
# once per forward, so that pass leaves the trainer's backward with released head weights
# ("size of tensor a (0) must match"), and ZeRO-3's hooks replace the tensors a module call
# receives, so inside one `shared` no longer reaches the losses.
_NEEDS_SHARED_GRADIENTS = (
    "it differentiates each task loss w.r.t. the shared activation inside the forward pass, "
    "and ZeRO-3 fetches partitioned head weights for only one backward pass per forward; "
    "use ZeRO stage 0, 1 or 2"
)
ZERO3_UNSUPPORTED: dict[str, str] = {
    "gradnorm": _NEEDS_SHARED_GRADIENTS,
    "pcgrad": _NEEDS_SHARED_GRADIENTS,
}

__all__ = [
    "WEIGHTINGS",
    "ZERO3_UNSUPPORTED",
    "LossWeighting",
    "WeightingModule",
    "build_weighting",
    "check_zero_stage",
    "kpi_key",
    "loss_key",
    "option_names",
]


def _check_name(name: str) -> type[WeightingModule]:
    if name not in WEIGHTINGS:
        raise ValueError(options.unknown_name_message("loss weighting", name, WEIGHTINGS))
    return WEIGHTINGS[name]


def option_names(name: str) -> list[str]:
    """The options a method accepts: the fields of its ``Settings`` dataclass."""
    return options.option_names(_check_name(name).Settings)


def build_weighting(
    name: str, tasks: Sequence[str], weighting_options: Mapping[str, Any] | None = None
) -> nn.Module:
    """The method registered as ``name`` for ``tasks`` (every task of the run, stable order).

    ``weighting_options`` become the method's ``Settings`` exactly as config sections are
    built: unknown names (with a hint), wrong types and out-of-range values are errors.
    """
    cls = _check_name(name)
    try:
        settings = options.build_settings(cls.Settings, weighting_options, "weighting_options")
    except options.OptionsError as error:
        raise options.OptionsError(f"loss weighting {name!r}: {error}") from None
    return cls(tasks, settings)


def check_zero_stage(name: str, zero_stage: int) -> None:
    """Raise ValueError if method ``name`` cannot run at DeepSpeed ZeRO stage ``zero_stage``."""
    _check_name(name)
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {zero_stage}")
    if zero_stage == 3 and name in ZERO3_UNSUPPORTED:
        raise ValueError(
            f"loss weighting {name!r} does not work at ZeRO-3: {ZERO3_UNSUPPORTED[name]}"
        )
