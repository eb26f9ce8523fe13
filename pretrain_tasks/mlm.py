"""Masked language modelling with whole-word masking: the BERT baseline (Devlin et al. 2019, 3.1).

Examples are packed runs of consecutive sentences (``packing.pack_sentences``). Masking is
dynamic (drawn anew in every batch by the collator, vectorised): each word is chosen with
probability ``mask_probability``; all sub-tokens of a chosen word get one action, 80%
[MASK] / 10% random token / 10% kept. The loss is computed on masked positions only,
through a head whose decoder is tied to the word embeddings. Masking, head and loss live in
``masking``, shared with the other masking tasks; positions another masking task already
masked in the same batch are left alone (``masking.MASKED_POSITIONS``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from pretrain_tasks.base import (
    AttachingCollate,
    CorpusView,
    Encoded,
    SkipDocument,
    TaskLoss,
    labelled_positions,
)
from pretrain_tasks.document import Document
from pretrain_tasks.masking import (
    MaskedLMHead,
    add_gather_index,
    maskable_positions,
    masked_lm_batch_loss,
    masked_lm_metrics,
    record_masked,
    whole_word_mask,
)
from pretrain_tasks.packing import pack_sentences
from schedules import options


@dataclass(frozen=True)
class MLMSettings(options.Settings):
    """Options of the ``mlm`` task (probabilities in [0, 1])."""

    mask_probability: float = options.probability(0.15)
    replace_probability: float = options.probability(0.8)
    random_probability: float = options.probability(0.1)


class MLMTask(AttachingCollate):
    """Whole-word masked language model (the baseline objective)."""

    name: ClassVar[str] = "mlm"
    family: ClassVar[str] = "baseline"
    level: ClassVar[str] = "token"
    masks_inputs: ClassVar[bool] = True
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
        self, document: Document, corpus: CorpusView, rng: random.Random
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
        maskable = maskable_positions(batch, self.tokenizer.all_special_ids)
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
        record_masked(batch, batch["mlm_labels"])
        add_gather_index(batch, "mlm_labels")
        return True

    def build_head(self, config: Any) -> nn.Module:
        """A tied masked-LM head."""
        return MaskedLMHead(config.hidden_size, config.vocab_size, config.layer_norm_eps)

    def loss(self, head: nn.Module, encoded: Encoded, batch: Mapping[str, Tensor]) -> TaskLoss:
        """Loss over masked positions."""
        return masked_lm_batch_loss(head, encoded, batch, "mlm_labels")

    def read_positions(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The masked tokens."""
        return labelled_positions(batch["mlm_labels"])

    def metrics(self, stats: Mapping[str, float]) -> dict[str, float]:
        """Masked-token accuracy and perplexity."""
        return masked_lm_metrics(stats)

    def label_counts(self, columns: Mapping[str, Sequence[Any]]) -> dict[str, int]:
        """Counts of words (maskable units) and tokens in the prepared examples."""
        return {
            "words": int(sum(sum(r) for r in columns["word_starts"])),
            "tokens": int(sum(len(r) for r in columns["input_ids"])),
        }
