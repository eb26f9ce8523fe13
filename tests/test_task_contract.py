"""Every registered pre-training task passes ``pretrain_tasks.contract.check_task``.

Parametrized over ``pretrain_tasks.TASKS``: a task registered there is checked here with no
further code, by the same public function a plug-in author runs on their own task. The
second half shows that the check fails on tasks that break a rule (so it can fail).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import pretrain_tasks
from pretrain_tasks.base import IGNORE_INDEX, first_positions
from pretrain_tasks.contract import ContractError, check_task
from pretrain_tasks.masking import MASKED_POSITIONS
from pretrain_tasks.mlm import MLMTask
from pretrain_tasks.token_document_relation import TokenDocumentRelationTask

TASK_NAMES = sorted(pretrain_tasks.TASKS)

# Examples and skip reasons that follow by hand from tests/conftest.py's FIXTURE_TEXT and
# the fixture tokenizer's sentence lengths in tokens (62 fit between [CLS] and [SEP]):
# Ada Lovelace [13, 22, 18, 20 | 18, 23, 14], Paris [14, 17, 15, 16 | 19, 20], Machine
# learning [19, 17, 18, 22, 16], Single [13], plus one empty document.
# - packed documents (mlm, knowledge_masking, capitalization): Ada 53 | 61 | 14, Paris 62 |
#   39, Machine learning 54 | 38, Single 13 -> 8; the empty document is skipped;
# - token_document_relation packs paragraphs: Ada 53 | 20 | 55, Paris 62 | 39, Machine
#   learning 54 | 38 -> 7; Single has one segment, the empty document no sentences;
# - sentence_distance: one pair per sentence but the last of each multi-sentence document
#   (6 + 5 + 4 = 15); Single and the empty document are skipped.
PACKED = (8, {"no_sentences": 1})
EXPECTED = {
    "mlm": PACKED,
    "knowledge_masking": PACKED,
    "capitalization": PACKED,
    "token_document_relation": (7, {"single_segment": 1, "no_sentences": 1}),
    "sentence_distance": (15, {"fewer_than_two_sentences": 2}),
}


@pytest.mark.parametrize("name", TASK_NAMES)
def test_builtin_task_passes_the_contract(name, tokenizer, documents, corpus_view) -> None:
    cls = pretrain_tasks.TASKS[name]
    assert Path(inspect.getfile(cls)).stem == name  # name = file stem = config string
    report = check_task(cls, tokenizer, documents, corpus_view)
    assert report.task == name
    examples, skipped = EXPECTED.get(name, (None, None))
    if examples is not None:
        assert report.examples == examples
    if skipped is not None:
        assert report.skipped == skipped
    masking = {"mlm", "knowledge_masking"}
    assert report.attached == ((name in masking) if cls.level == "token" else None)


def test_masking_tasks_leave_each_other_s_positions_alone(tokenizer, documents) -> None:
    """mlm then knowledge_masking on one batch: disjoint labels, both recorded."""
    from pretrain_tasks.contract import host_batch

    batch, columns = host_batch(tokenizer, documents, 64, 8)
    generator = torch.Generator().manual_seed(0)
    for name in ("mlm", "knowledge_masking"):
        task = pretrain_tasks.build_task(name, {"mask_probability": 0.5}, tokenizer, 64)
        assert task.attach(batch, columns, generator)
    mlm = batch["mlm_labels"] != IGNORE_INDEX
    knowledge = batch["knowledge_masking_labels"] != IGNORE_INDEX
    assert mlm.any() and knowledge.any()
    assert not (mlm & knowledge).any()
    assert torch.equal(batch[MASKED_POSITIONS], mlm | knowledge)


# ---------------------------------------------------------------- the check can fail


class UnrecordedMasking(MLMTask):
    """Masks tokens but forgets to record them: breaks the masking protocol."""

    def attach(self, batch, examples, generator) -> bool:
        previous = batch.get(MASKED_POSITIONS)
        super().attach(batch, examples, generator)
        if previous is None:
            del batch[MASKED_POSITIONS]
        else:
            batch[MASKED_POSITIONS] = previous
        return True


class SilentMasking(TokenDocumentRelationTask):
    """Changes input ids while declaring ``masks_inputs = False``."""

    def attach(self, batch, examples, generator) -> bool:
        if not super().attach(batch, examples, generator):  # a host batch: no labels column
            batch[self.labels_key] = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        batch["input_ids"] = batch["input_ids"].flip(1)
        return True


class ExtraColumn(TokenDocumentRelationTask):
    """Returns a column it does not declare."""

    def build_examples(self, document, corpus, rng):
        return [{**e, "undeclared": 1} for e in super().build_examples(document, corpus, rng)]


@dataclass(frozen=True)
class NoOptions:
    """No options."""


class WrongConstructor(TokenDocumentRelationTask):
    """Takes its arguments in another order than the Protocol documents."""

    Settings: ClassVar[type] = NoOptions

    def __init__(self, tokenizer, settings) -> None:  # no max_seq_length
        super().__init__(TokenDocumentRelationTask.Settings(), tokenizer, 64)


class MisreadPositions(MLMTask):
    """Declares the [CLS] rows while its loss reads the masked tokens."""

    def read_positions(self, batch):
        return first_positions(batch)


@pytest.mark.parametrize(
    ("cls", "rule"),
    [
        (UnrecordedMasking, "record masks"),
        (MisreadPositions, "the loss reads only the rows read_positions declares"),
        (SilentMasking, "masks_inputs = False: input_ids unchanged"),
        (ExtraColumn, "example columns"),
        (WrongConstructor, "the constructor must be"),
    ],
)
def test_check_task_rejects_broken_tasks(cls, rule, tokenizer, documents) -> None:
    with pytest.raises(ContractError, match=rule):
        check_task(cls, tokenizer, documents)


def test_count_correct_counts_top1_hits_as_argmax_does() -> None:
    from pretrain_tasks.base import count_correct

    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(200, 50, generator=generator, requires_grad=True)
    targets = torch.randint(0, 50, (200,), generator=generator)
    targets[::7] = IGNORE_INDEX
    targets[1::5] = logits.argmax(-1)[1::5]  # plenty of hits (random targets hit ~2%)
    expected = ((logits.argmax(-1) == targets) & (targets != IGNORE_INDEX)).sum()
    assert int(count_correct(logits, targets)) == int(expected) > 30
    # a target tied with another class at the row's maximum counts as a hit
    tied = torch.tensor([[1.0, 3.0, 3.0], [5.0, 0.0, 0.0]])
    assert int(count_correct(tied, torch.tensor([2, IGNORE_INDEX]))) == 1
    assert int(count_correct(tied, torch.tensor([0, 0]))) == 1
