"""The sparse top layer: the encoder's top layer computed at the rows the losses read only
gives the dense forward's losses and gradients (dropout off), and falls back where it must."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_model import TINY

from ernie_cpt.config import ModelConfig, SharingConfig
from ernie_cpt.model import build_model
from ernie_cpt.model.sparse_top import TOP_KEYS, top_row_columns
from ernie_cpt.training.step import read_rows, sparse_top
from ernie_cpt.training.train_module import TrainModule
from pretrain_tasks import build_task

NO_DROPOUT = dict(TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
TASKS = ("mlm", "capitalization", "sentence_distance")


def setup_module_and_batch(tokenizer, sharing: SharingConfig | None = None):
    tasks = {name: build_task(name, {}, tokenizer, 64) for name in TASKS}
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(**NO_DROPOUT), tasks, len(tokenizer), tokenizer.pad_token_id, sharing=sharing
    )
    lengths = [40, 23, 64, 9]  # padded: a mask the top layer must respect
    ids = [
        [tokenizer.cls_token_id, *torch.randint(5, len(tokenizer), (n - 2,)).tolist()]
        + [tokenizer.sep_token_id]
        for n in lengths
    ]
    examples = {
        "input_ids": ids,
        "token_type_ids": [[0] * len(row) for row in ids],
        "word_starts": [[0] + [1] * (len(row) - 2) + [0] for row in ids],
        "sentence_distance_label": [0, 1, 2, 1],
    }
    generator = torch.Generator().manual_seed(1)
    batch = tasks["sentence_distance"].collate(examples, generator)
    tasks["mlm"].attach(batch, examples, generator)
    batch["task_type_ids"] = torch.zeros_like(batch["input_ids"])
    return TrainModule(model, tasks), tasks, batch


def run_of(module: TrainModule, wanted: bool) -> SimpleNamespace:
    """What ``step.sparse_top`` reads of a run."""
    train = SimpleNamespace(sparse_top_layer=wanted)
    return SimpleNamespace(
        config=SimpleNamespace(train=train), engine=SimpleNamespace(module=module)
    )


def test_the_run_builds_row_columns_when_asked_and_supported(tokenizer):
    module, _, _ = setup_module_and_batch(tokenizer)
    assert sparse_top(run_of(module, wanted=True))
    assert not sparse_top(run_of(module, wanted=False))


def losses_and_grads(module: TrainModule, batch: dict, names: list[str]):
    module.zero_grad()
    total, losses, _ = module(batch, names, padded=True)
    total.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return {n: float(v.mean().detach()) for n, v in losses.items()}, grads


@pytest.mark.parametrize("names", [["mlm"], ["sentence_distance", "mlm"]])
def test_sparse_top_layer_gives_the_dense_losses_and_gradients(tokenizer, names):
    module, tasks, batch = setup_module_and_batch(tokenizer)
    sparse_batch = {**batch, **read_rows(batch, [tasks[n] for n in names])}
    assert set(TOP_KEYS) <= set(sparse_batch)
    rows = sparse_batch["top_rows"]
    assert len(rows) < batch["attention_mask"].sum()  # the sparse path has work to skip
    dense_losses, dense_grads = losses_and_grads(module, batch, names)
    sparse_losses, sparse_grads = losses_and_grads(module, sparse_batch, names)
    assert sparse_losses == pytest.approx(dense_losses, rel=1e-5)
    assert set(sparse_grads) == set(dense_grads)
    for name, grad in dense_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_sparse_top_layer_is_a_different_computation_at_unread_rows(tokenizer):
    """Only the read rows are the top layer's: the others keep the layer below (a caller
    reading them would be wrong, which is why tasks must declare what they read)."""
    module, tasks, batch = setup_module_and_batch(tokenizer)
    top = read_rows(batch, [tasks["mlm"]])
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    args = (*args, batch["task_type_ids"])
    dense = module.model(*args, padded=True).sequence_output.reshape(-1, 32)
    sparse = module.model(*args, padded=True, top=top).sequence_output.reshape(-1, 32)
    rows = top["top_rows"]
    torch.testing.assert_close(sparse[rows], dense[rows], rtol=1e-5, atol=1e-6)
    unread = torch.ones(len(dense), dtype=torch.bool)
    unread[rows] = False
    assert not torch.allclose(sparse[unread], dense[unread])


def test_a_task_that_reads_every_token_turns_the_sparse_path_off(tokenizer):
    _, tasks, batch = setup_module_and_batch(tokenizer)
    assert read_rows(batch, [tasks["mlm"], object()]) == {}  # a task that does not say
    everything = torch.arange(batch["input_ids"].numel())
    assert top_row_columns(everything, *batch["input_ids"].shape) is None


def test_top_row_columns_place_each_row_once():
    rows = torch.tensor([9, 0, 3, 9, 12, 13, 14])  # unsorted, a duplicate; T = 8, B = 2
    columns = top_row_columns(rows, 2, 8)
    assert columns["top_rows"].tolist() == [0, 3, 9, 12, 13, 14]
    assert columns["top_positions"].tolist() == [[0, 3, 0, 0], [1, 4, 5, 6]]
    flat = columns["top_positions"].reshape(-1)[columns["top_select"]]
    assert (flat + 8 * (columns["top_rows"] // 8)).tolist() == columns["top_rows"].tolist()


def test_architectures_other_than_hard_take_the_dense_path(tokenizer):
    module, tasks, batch = setup_module_and_batch(tokenizer, SharingConfig(kind="mmoe"))
    top = read_rows(batch, [tasks["mlm"]])
    assert not module.model.sparse_top_supported()
    assert not sparse_top(run_of(module, wanted=True))  # no row columns are built
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    args = (*args, batch["task_type_ids"])
    dense = module.model(*args, ["mlm"], padded=True).for_task("mlm").sequence_output
    sparse = module.model(*args, ["mlm"], padded=True, top=top).for_task("mlm").sequence_output
    assert torch.equal(dense, sparse)
