"""Masking inputs at train time, and the masked-LM head and loss the masking tasks share.

A task whose ``attach``/``collate`` replaces input tokens declares ``masks_inputs = True``.
Several such tasks may label one batch; the boolean (B, T) batch column
``MASKED_POSITIONS`` records every position some task has already masked, so a later
masking task leaves those positions (and their labels) alone. A new masking task reads it
with ``maskable_positions`` and adds its own positions with ``record_masked``; no other
task needs to know it exists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from pretrain_tasks.base import (
    IGNORE_INDEX,
    Encoded,
    TaskLoss,
    count_correct,
    labelled_positions,
)

# Batch column: True where a masking task already replaced/labelled the token, (B, T) bool.
MASKED_POSITIONS = "masked_positions"


def maskable_positions(batch: Mapping[str, Tensor], special_ids: Sequence[int]) -> Tensor:
    """(B, T) bool: real, non-special tokens that no masking task has masked yet."""
    input_ids = batch["input_ids"]
    special = torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype))
    maskable = batch["attention_mask"].bool() & ~special
    if MASKED_POSITIONS in batch:
        maskable &= ~batch[MASKED_POSITIONS]
    return maskable


def record_masked(batch: dict[str, Tensor], labels: Tensor) -> None:
    """Add the positions ``labels`` (B, T) marks (!= IGNORE_INDEX) to ``MASKED_POSITIONS``."""
    chosen = labels != IGNORE_INDEX
    if MASKED_POSITIONS in batch:
        chosen = chosen | batch[MASKED_POSITIONS]
    batch[MASKED_POSITIONS] = chosen


def unit_mask(
    input_ids: Tensor,
    unit_ids: Tensor,
    *,
    probability: float,
    mask_token_id: int,
    vocab_size: int,
    generator: torch.Generator,
    replace_probability: float = 0.8,
    random_probability: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """Mask whole units; returns (masked input_ids, labels with IGNORE_INDEX elsewhere).

    ``unit_ids`` (B, T): 0 = never masked, k > 0 = unit id (tokens of one unit share it).
    The choice and the 80/10/10 action are drawn per unit, so a unit is masked as a whole.
    """
    batch, length = input_ids.shape
    unit_ids = unit_ids.long()
    num_units = int(unit_ids.max().item()) + 1 if unit_ids.numel() else 1
    chosen = torch.rand(batch, num_units, generator=generator) < probability  # (B, U)
    action = torch.rand(batch, num_units, generator=generator)  # (B, U)
    token_chosen = chosen.gather(1, unit_ids) & (unit_ids > 0)  # (B, T)
    token_action = action.gather(1, unit_ids)
    labels = torch.where(token_chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    to_mask = token_chosen & (token_action < replace_probability)
    to_random = (
        token_chosen
        & (token_action >= replace_probability)
        & (token_action < replace_probability + random_probability)
    )
    random_ids = torch.randint(vocab_size, (batch, length), generator=generator)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels


def whole_word_mask(
    input_ids: Tensor,
    word_starts: Tensor,
    maskable: Tensor,
    *,
    probability: float,
    mask_token_id: int,
    vocab_size: int,
    generator: torch.Generator,
    replace_probability: float = 0.8,
    random_probability: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """``unit_mask`` with words as units.

    ``word_starts`` (B, T) is 1 on the first sub-token of each word; ``maskable`` (B, T) is
    False on special and padding tokens, which get unit 0 (never masked).
    """
    word_index = word_starts.long().cumsum(dim=1)  # (B, T): word number, 1-based
    return unit_mask(
        input_ids,
        word_index.masked_fill(~maskable.bool(), 0),
        probability=probability,
        mask_token_id=mask_token_id,
        vocab_size=vocab_size,
        generator=generator,
        replace_probability=replace_probability,
        random_probability=random_probability,
    )


class MaskedLMHead(nn.Module):
    """BERT's prediction head: dense + GELU + LayerNorm, then a decoder tied to embeddings."""

    tie_to_word_embeddings: ClassVar[bool] = True

    def __init__(self, hidden_size: int, vocab_size: int, layer_norm_eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.act = nn.GELU()
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.decoder = nn.Linear(hidden_size, vocab_size)  # weight replaced by the tie

    def forward(self, token_states: Tensor) -> Tensor:  # (N, H) -> (N, V)
        """Vocabulary logits for the selected (masked) positions only."""
        return self.decoder(self.layer_norm(self.act(self.dense(token_states))))


# Gathered positions are padded to a multiple of this (few distinct shapes for compilers).
GATHER_MULTIPLE = 16


def add_gather_index(batch: dict[str, Tensor], key: str) -> None:
    """Add ``<key>_index`` (N,) flat positions into (B*T) and ``<key>_targets`` (N,) of the
    labelled positions of ``batch[key]`` (B, T), N padded up to a multiple of
    ``GATHER_MULTIPLE`` with position 0 / IGNORE_INDEX.

    Computed at collate time on the host, so the loss gathers a known-size set of rows on
    the device instead of a boolean-mask selection (which reads the mask's count back to
    the host: a synchronisation per loss).
    """
    flat = batch[key].reshape(-1)  # (B*T,)
    index = labelled_positions(batch[key])  # host tensor: no device sync
    size = -(-max(len(index), 1) // GATHER_MULTIPLE) * GATHER_MULTIPLE
    padded = torch.zeros(size, dtype=torch.long)
    padded[: len(index)] = index
    targets = torch.full((size,), IGNORE_INDEX, dtype=torch.long)
    targets[: len(index)] = flat[index]
    batch[f"{key}_index"], batch[f"{key}_targets"] = padded, targets


def masked_lm_loss(head: nn.Module, encoded: Encoded, labels: Tensor) -> TaskLoss:
    """Cross-entropy over masked positions only (the decoder never sees other tokens)."""
    flat = labels.reshape(-1)
    index = labelled_positions(labels)  # boolean selection: syncs on a GPU
    return masked_lm_gathered_loss(head, encoded, index, flat[index])


def masked_lm_batch_loss(
    head: nn.Module, encoded: Encoded, batch: Mapping[str, Tensor], key: str
) -> TaskLoss:
    """``masked_lm_loss`` of ``batch[key]``, from ``add_gather_index``'s columns if present."""
    if f"{key}_index" in batch:
        return masked_lm_gathered_loss(
            head, encoded, batch[f"{key}_index"], batch[f"{key}_targets"]
        )
    return masked_lm_loss(head, encoded, batch[key])


def masked_lm_gathered_loss(
    head: nn.Module, encoded: Encoded, index: Tensor, targets: Tensor
) -> TaskLoss:
    """Cross-entropy of the rows ``index`` (N,) of the flattened (B*T, H) states against
    ``targets`` (N,); IGNORE_INDEX targets (padding of the index) count nothing."""
    hidden = encoded.sequence_output
    states = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)  # (N, H)
    logits = head(states).float()  # (N, V)
    loss_sum = nn.functional.cross_entropy(
        logits, targets, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    valid = targets != IGNORE_INDEX
    correct = count_correct(logits, targets)
    count = valid.sum()
    stats = {"loss_sum": loss_sum.detach(), "correct": correct, "count": count}
    return TaskLoss(loss_sum, count, stats)


def masked_lm_metrics(stats: Mapping[str, float]) -> dict[str, float]:
    """Masked-token accuracy, mean loss and perplexity."""
    count = max(float(stats.get("count", 0)), 1.0)
    loss = float(stats.get("loss_sum", 0)) / count
    return {
        "accuracy": float(stats.get("correct", 0)) / count,
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
    }
