"""Masked language modelling with whole-word masking: the BERT baseline (Devlin et al. 2019, 3.1).

Examples are packed runs of consecutive sentences. Masking is dynamic (drawn anew in every
batch by the collator, vectorised): each word is chosen with probability
``mask_probability``; all sub-tokens of a chosen word get one action, 80% [MASK] / 10%
random token / 10% kept. The loss is computed on masked positions only, through a head
whose decoder is tied to the word embeddings.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from pretrain_tasks.base import (
    IGNORE_INDEX,
    AttachingCollate,
    CorpusView,
    Encoded,
    SkipDocument,
    TaskLoss,
    pack_sentences,
)


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


# Labels of other masked-LM tasks: positions they already masked are left to them.
OTHER_MASKED_LM_LABELS = ("knowledge_masking_labels",)


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


@dataclass(frozen=True)
class MLMSettings:
    """Options of the ``mlm`` task."""

    mask_probability: float = 0.15
    replace_probability: float = 0.8
    random_probability: float = 0.1


def masked_lm_loss(head: nn.Module, encoded: Encoded, labels: Tensor) -> TaskLoss:
    """Cross-entropy over masked positions only (the decoder never sees other tokens)."""
    positions = labels != IGNORE_INDEX  # (B, T)
    states = encoded.sequence_output[positions]  # (N, H)
    targets = labels[positions]  # (N,)
    logits = head(states).float()  # (N, V)
    loss_sum = nn.functional.cross_entropy(logits, targets, reduction="sum")
    correct = (logits.argmax(-1) == targets).sum()
    count = positions.sum()
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


class MLMTask(AttachingCollate):
    """Whole-word masked language model (the baseline objective)."""

    name: ClassVar[str] = "mlm"
    family: ClassVar[str] = "baseline"
    level: ClassVar[str] = "token"
    Settings: ClassVar[type] = MLMSettings

    def __init__(self, settings: MLMSettings, tokenizer: Any, max_seq_length: int) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.num_labels = len(tokenizer)

    def example_columns(self) -> dict[str, str]:
        """MLM needs only the shared columns."""
        return {}

    def build_examples(
        self, document: Any, corpus: CorpusView, rng: random.Random
    ) -> list[dict[str, Any]]:
        """Packed runs of consecutive sentences, one per paragraph group."""
        sentences = document.sentences()
        if not sentences:
            raise SkipDocument("no_sentences")
        return pack_sentences(self.tokenizer, sentences, self.max_seq_length)

    def attach(
        self,
        batch: dict[str, Tensor],
        examples: Mapping[str, Sequence[Any]],
        generator: torch.Generator,
    ) -> bool:
        """Mask another task's batch in place and add ``mlm_labels``."""
        special = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        for token_id in self.tokenizer.all_special_ids:
            special |= batch["input_ids"] == token_id
        maskable = batch["attention_mask"].bool() & ~special
        for key in OTHER_MASKED_LM_LABELS:  # positions another masked-LM task already masked
            if key in batch:
                maskable &= batch[key] == IGNORE_INDEX
        batch["input_ids"], batch["mlm_labels"] = whole_word_mask(
            batch["input_ids"],
            batch["word_starts"],
            maskable,
            probability=self.settings.mask_probability,
            mask_token_id=self.tokenizer.mask_token_id,
            vocab_size=len(self.tokenizer),
            generator=generator,
            replace_probability=self.settings.replace_probability,
            random_probability=self.settings.random_probability,
        )
        return True

    def build_head(self, config: Any) -> nn.Module:
        """A tied masked-LM head."""
        return MaskedLMHead(config.hidden_size, config.vocab_size, config.layer_norm_eps)

    def loss(self, head: nn.Module, encoded: Encoded, batch: Mapping[str, Tensor]) -> TaskLoss:
        """Loss over masked positions."""
        return masked_lm_loss(head, encoded, batch["mlm_labels"])

    def metrics(self, stats: Mapping[str, float]) -> dict[str, float]:
        """Masked-token accuracy and perplexity."""
        return masked_lm_metrics(stats)

    def label_counts(self, columns: Mapping[str, Sequence[Any]]) -> dict[str, int]:
        """Counts of words (maskable units) and tokens in the prepared examples."""
        return {
            "words": int(sum(sum(r) for r in columns["word_starts"])),
            "tokens": int(sum(len(r) for r in columns["input_ids"])),
        }
