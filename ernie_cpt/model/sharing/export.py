"""Saving and loading a sharing architecture beside the exported shared encoder.

An export directory holds the shared encoder (lower layers; ``AutoModel`` loads it) and,
for every kind but ``hard``, two more files:

- ``sharing.safetensors``: the architecture's tensors, keys as in ``model.sharing``
  (e.g. ``experts.0.layer.0.attention.self.query.weight``, ``gates.mlm.linear.weight``);
- ``sharing.json``: ``{"format": 1, "kind", "settings" (the run's sharing section),
  "tasks" (task -> "token"/"sentence", run order), "shared_layers", "top_layers",
  "hidden_size"}``.

``load_task_route(directory, task)`` rebuilds encoder + architecture and returns a module
whose forward gives that task's full path (``Encoded``: its own top-of-network sequence
and pooled output), e.g. to fine-tune along a chosen pre-training task's route.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ernie_cpt.model.sharing import KINDS

FORMAT = 1
WEIGHTS, META = "sharing.safetensors", "sharing.json"


def rebuild_sharing(model: nn.Module, settings: Any, levels: Mapping[str, str]) -> None:
    """Give ``model`` (a ``MultiTaskModel`` whose encoder already holds only the shared
    layers, e.g. rebuilt from a run's ``encoder_config.json``) an untrained architecture of
    the right shape, ready for ``load_state_dict``; nothing for ``hard``."""
    from transformers.models.ernie.modeling_ernie import ErnieLayer

    if settings.kind == "hard":
        return
    config = model.encoder.config
    templates = [ErnieLayer(config) for _ in range(settings.top_layers)]
    model.sharing = KINDS[settings.kind].build(
        templates,
        levels,
        settings,
        hidden_size=config.hidden_size,
        std=config.initializer_range,
        fresh=False,
        seed=settings.seed,
    )


def sharing_state(model: nn.Module, settings: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, metadata) to save beside the encoder; ({}, {}) for hard."""
    if model.sharing is None:
        return {}, {}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.sharing.state_dict().items()}
    meta = {
        "format": FORMAT,
        "kind": settings.kind,
        "settings": dataclasses.asdict(settings),
        "tasks": dict(model.sharing.levels),
        "shared_layers": model.encoder.config.num_hidden_layers,
        "top_layers": settings.top_layers,
        "hidden_size": model.encoder.config.hidden_size,
    }
    return tensors, meta


def save_sharing(model: nn.Module, settings: Any, directory: Path) -> list[str]:
    """Write ``sharing.safetensors`` + ``sharing.json`` into ``directory``; the file names
    written (none for hard)."""
    from safetensors.torch import save_file

    tensors, meta = sharing_state(model, settings)
    if not tensors:
        return []
    save_file(tensors, str(Path(directory) / WEIGHTS), {"format": "pt"})
    (Path(directory) / META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return [WEIGHTS, META]


class TaskRoute(nn.Module):
    """Shared encoder + one task's path through the architecture."""

    def __init__(self, encoder: nn.Module, sharing: nn.Module, task: str) -> None:
        super().__init__()
        self.encoder, self.sharing, self.task = encoder, sharing, task

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        task_type_ids: Tensor | None = None,
    ) -> Any:
        """(B, T) ids -> ``Encoded`` of the task: sequence (B, T, H), pooled (B, H)."""
        from transformers.masking_utils import create_bidirectional_mask

        from pretrain_tasks.base import Encoded

        out = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            task_type_ids=task_type_ids,
        )
        shared = out.last_hidden_state
        mask = create_bidirectional_mask(
            config=self.encoder.config, inputs_embeds=shared, attention_mask=attention_mask
        )
        sequence = self.sharing(shared, mask, attention_mask, [self.task]).outputs[self.task]
        return Encoded(sequence, self.encoder.pooler(sequence))


def load_task_route(directory: Path, task: str) -> TaskRoute:
    """Encoder (``AutoModel``-style, from ``directory``) + architecture, routed for ``task``."""
    from safetensors.torch import load_file
    from transformers import ErnieModel

    from ernie_cpt.config import SharingConfig

    directory = Path(directory)
    meta = json.loads((directory / META).read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{directory / META}: unknown format {meta.get('format')!r}")
    if task not in meta["tasks"]:
        raise ValueError(f"{task!r} has no route in {directory}; tasks: {list(meta['tasks'])}")
    encoder = ErnieModel.from_pretrained(str(directory))
    holder = nn.Module()
    holder.encoder, holder.sharing = encoder, None
    rebuild_sharing(holder, SharingConfig(**meta["settings"]), meta["tasks"])
    holder.sharing.load_state_dict(load_file(str(directory / WEIGHTS)))
    return TaskRoute(encoder, holder.sharing, task).train(False)
