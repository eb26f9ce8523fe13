"""The model: one shared ERNIE encoder (transformers' ErnieModel with a task embedding) and
one small head per task in an ``nn.ModuleDict``; optionally a multi-task architecture over
the encoder's top layers (``ernie_cpt.model.sharing``, ``sharing.kind`` other than hard).

Nothing here knows of DeepSpeed, ranks or logging. Heads that declare
``tie_to_word_embeddings`` share their decoder weight with the word embeddings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import ErnieConfig, ErnieModel
from transformers.masking_utils import create_bidirectional_mask

from ernie_cpt.config import ModelConfig, SharingConfig
from ernie_cpt.errors import InputError
from ernie_cpt.model.init_from import config_from_checkpoint, load_init_checkpoint
from ernie_cpt.model.sharing import build_sharing, gate_statistics
from ernie_cpt.model.sharing.base import SharedEncoding
from ernie_cpt.model.sparse_top import sparse_top_layer
from pretrain_tasks.base import Encoded

log = logging.getLogger(__name__)


def encoder_config(model: ModelConfig, vocab_size: int, pad_token_id: int) -> ErnieConfig:
    """An ErnieConfig with the task embedding on, from our model section."""
    config = ErnieConfig(
        vocab_size=vocab_size,
        hidden_size=model.hidden_size,
        num_hidden_layers=model.num_hidden_layers,
        num_attention_heads=model.num_attention_heads,
        intermediate_size=model.intermediate_size,
        max_position_embeddings=model.max_position_embeddings,
        hidden_dropout_prob=model.hidden_dropout_prob,
        attention_probs_dropout_prob=model.attention_probs_dropout_prob,
        hidden_act=model.hidden_act,
        pad_token_id=pad_token_id,
        use_task_id=True,
        task_type_vocab_size=model.task_type_vocab_size,
    )
    config._attn_implementation = model.attn_implementation
    return config


class MultiTaskModel(nn.Module):
    """Shared encoder (+ sharing architecture) + per-task heads; ``forward`` returns the
    encoder outputs, per task when an architecture routes them."""

    def __init__(
        self,
        encoder: ErnieModel,
        heads: Mapping[str, nn.Module],
        sharing: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(dict(heads))
        self.tie_weights()
        # None (hard) is a plain attribute: no module, no state_dict keys, today's model.
        self.sharing = sharing
        self.last_gates: dict[str, dict[str, Tensor]] = {}
        self.last_token_mask: Tensor | None = None

    def tie_weights(self) -> None:
        """Share the word-embedding matrix with every head that asks for it."""
        for head in self.heads.values():
            if getattr(head, "tie_to_word_embeddings", False):
                head.decoder.weight = self.encoder.embeddings.word_embeddings.weight

    def add_head(self, name: str, head: nn.Module) -> None:
        """Add a task's head (a task introduced later)."""
        if self.sharing is not None:
            raise ValueError("with a sharing architecture, build the model with every task")
        self.heads[name] = head
        self.tie_weights()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor,
        task_type_ids: Tensor,
        tasks: Sequence[str] = (),
        padded: bool | None = None,
        top: Mapping[str, Tensor] | None = None,
    ) -> SharedEncoding:
        """Encode a batch: (B, T) ids -> sequence (B, T, H) and pooled (B, H) outputs, and
        with an architecture each of ``tasks``' own outputs (``SharedEncoding.for_task``).
        ``padded``: whether ``attention_mask`` has a 0, when the caller knows (None: unknown).
        ``top``: ``sparse_top.top_row_columns`` of the rows the losses read; the top layer
        is then computed at those rows only (other rows of the sequence output are not the
        top layer's: only for callers that read nothing else). Ignored where unsupported."""
        attention = self.layer_mask(attention_mask, padded)
        if top is not None and padded is not None and self.sparse_top_supported():
            return self.forward_sparse_top(
                input_ids, attention_mask, token_type_ids, task_type_ids, attention, top, padded
            )
        out = self.encoder(
            input_ids=input_ids,
            attention_mask=attention,
            token_type_ids=token_type_ids,
            task_type_ids=task_type_ids,
        )
        if self.sharing is None:
            return SharedEncoding(out.last_hidden_state, out.pooler_output, {}, None)
        shared = out.last_hidden_state  # (B, T, H) after the shared lower layers
        mask = create_bidirectional_mask(
            config=self.encoder.config, inputs_embeds=shared, attention_mask=attention
        )  # the same 4-D mask the encoder's own layers used
        routed = self.sharing(shared, mask, attention_mask, list(tasks))
        routes = {t: Encoded(seq, self.encoder.pooler(seq)) for t, seq in routed.outputs.items()}
        # Every architecture parameter joins the graph (zero weight): ZeRO sees the same
        # gradient set every step, whichever tasks (and experts) the step used.
        extra = torch.stack([p.sum() for p in self.sharing.parameters()]).sum() * 0.0
        if routed.penalty is not None:
            extra = extra + routed.penalty
        self.last_gates = {
            t: {k: g.detach() for k, g in gs.items()} for t, gs in routed.gates.items()
        }
        self.last_token_mask = attention_mask.detach()
        return SharedEncoding(shared, out.pooler_output, routes, extra)

    def sparse_top_supported(self) -> bool:
        """Whether ``forward`` can compute the top layer at given rows only (for a batch
        whose padding the caller knows): the hard-shared encoder with sdpa attention, not
        wrapped by ``torch.compile`` (the sparse path calls the encoder's parts, bypassing
        a wrapper)."""
        config = self.encoder.config
        return (
            self.sharing is None
            and not hasattr(self.encoder, "_orig_mod")
            and config._attn_implementation == "sdpa"
            and not config.is_decoder
            and len(self.encoder.encoder.layer) > 0
        )

    def forward_sparse_top(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor,
        task_type_ids: Tensor,
        attention: Tensor | None,
        top: Mapping[str, Tensor],
        padded: bool,
    ) -> SharedEncoding:
        """``forward`` with the top layer at ``top``'s rows (ErnieModel's forward, unrolled:
        embeddings, the lower layers on ``attention``, the top layer sparse, the pooler)."""
        encoder = self.encoder
        hidden = encoder.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, task_type_ids=task_type_ids
        )
        *lower, last = encoder.encoder.layer
        for layer in lower:
            hidden = layer(hidden, attention)
        sequence = sparse_top_layer(
            last,
            hidden,
            attention_mask if padded else None,
            top["top_positions"],
            top["top_select"],
            top["top_rows"],
        )
        pooled = encoder.pooler(sequence) if encoder.pooler is not None else None
        return SharedEncoding(sequence, pooled, {}, None)

    def layer_mask(self, attention_mask: Tensor, padded: bool | None) -> Tensor | None:
        """The mask handed to the encoder's layers, built without reading the device.

        Given the (B, T) mask, transformers asks the device whether it has a 0
        (``mask.all()``, a host-device synchronisation every forward) to drop it when
        there is none. A caller that knows (``padded``, from the host batch) skips that:
        no padding gives None (what transformers would give), padding gives transformers'
        own 4-D mask (sdpa: boolean, eager: additive) built without the check, which the
        encoder then takes as it is. Other attention implementations (flash, flex) and
        ``padded=None`` get the (B, T) mask as before."""
        config = self.encoder.config
        if padded is None or config._attn_implementation not in ("sdpa", "eager"):
            return attention_mask
        if not padded:
            return None
        dtype = self.encoder.embeddings.word_embeddings.weight.dtype
        probe = attention_mask.new_empty((*attention_mask.shape, 0), dtype=dtype)  # metadata
        return create_bidirectional_mask(
            config=config,
            inputs_embeds=probe,
            attention_mask=attention_mask,
            allow_is_bidirectional_skip=False,
        )

    def sharing_telemetry(self) -> dict[str, Any]:
        """The architecture's state: gate statistics of the last forward pass per task
        (mean distribution over experts, mean entropy) and its parameter-level view
        (cross-stitch matrices, soft-sharing distances, task-MoE routes); {} for hard."""
        if self.sharing is None:
            return {}
        out = dict(self.sharing.telemetry())
        if self.last_gates and self.last_token_mask is not None:
            out["gates"] = {
                task: {site: gate_statistics(g, self.last_token_mask) for site, g in sites.items()}
                for task, sites in self.last_gates.items()
            }
        return out


def build_model(
    model: ModelConfig,
    tasks: Mapping[str, Any],
    vocab_size: int,
    pad_token_id: int,
    sharing: SharingConfig | None = None,
) -> MultiTaskModel:
    """A fresh model, or one whose encoder and masked-LM heads start from ``model.init_from``.

    With ``sharing`` other than hard, the architecture is built last, from the (loaded)
    encoder's top layers, so ``hard`` builds exactly the model it always built.
    """
    if model.init_from:
        path = Path(model.init_from)
        config = config_from_checkpoint(path, model)
        if config.vocab_size != vocab_size:
            raise InputError(
                f"init_from {path}: vocabulary of {config.vocab_size} does not match the tokenizer's "
                f"{vocab_size}; use the checkpoint's tokenizer (tokenizer.path)"
            )
        encoder = ErnieModel(config)
    else:
        encoder = ErnieModel(encoder_config(model, vocab_size, pad_token_id))
    heads = {name: task.build_head(encoder.config) for name, task in tasks.items()}
    result = MultiTaskModel(encoder, heads)
    if model.init_from:  # encoder and masked-LM heads from the checkpoint; logs one line
        load_init_checkpoint(result, Path(model.init_from))
    if sharing is not None and sharing.kind != "hard":
        levels = {name: task.level for name, task in tasks.items()}
        result.sharing = build_sharing(sharing, result.encoder, levels, not model.init_from)
    return result


def grow_task_embeddings(model: MultiTaskModel, rows: int) -> None:
    """Make room for at least ``rows`` task ids, keeping the trained rows."""
    old = model.encoder.embeddings.task_type_embeddings
    if old.num_embeddings >= rows:
        return
    new = nn.Embedding(rows, old.embedding_dim)
    with torch.no_grad():
        new.weight.normal_(0.0, model.encoder.config.initializer_range)
        new.weight[: old.num_embeddings] = old.weight
    model.encoder.embeddings.task_type_embeddings = new
    model.encoder.config.task_type_vocab_size = rows
