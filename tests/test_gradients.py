"""Gradient telemetry helpers."""

from __future__ import annotations

import pytest
import torch

from ernie_cpt.training.gradient_telemetry import norms_and_cosines


def test_norms_and_cosines_exact():
    norms, cosines = norms_and_cosines(
        {
            "a": torch.tensor([3.0, 4.0]),
            "b": torch.tensor([-3.0, -4.0]),
            "c": torch.tensor([4.0, -3.0]),
        }
    )
    assert norms == {"a": 5.0, "b": 5.0, "c": 5.0}
    assert cosines["a"]["b"] == pytest.approx(-1.0)
    assert cosines["a"]["c"] == pytest.approx(0.0)
    assert cosines["a"]["a"] == pytest.approx(1.0)
    zero_norms, zero_cos = norms_and_cosines({"z": torch.zeros(2), "a": torch.ones(2)})
    assert zero_cos["z"]["a"] == 0.0


def test_gradient_telemetry_matches_an_independent_autograd_computation(
    tokenizer, documents, corpus_view, encoder_config
):
    import random

    from torch import nn
    from transformers import ErnieModel

    from ernie_cpt.model import MultiTaskModel
    from ernie_cpt.training.gradient_telemetry import gradient_telemetry
    from pretrain_tasks import build_task
    from pretrain_tasks.base import SkipDocument

    names = ("mlm", "sentence_distance")
    tasks = {name: build_task(name, {}, tokenizer, 64) for name in names}
    torch.manual_seed(0)
    encoder = ErnieModel(encoder_config)
    model = MultiTaskModel(encoder, {n: t.build_head(encoder_config) for n, t in tasks.items()})
    batches = {}
    for task_id, (name, task) in enumerate(tasks.items()):
        examples = []
        for document in documents:
            try:
                examples += task.build_examples(document, corpus_view, random.Random(0))
            except SkipDocument:
                pass
        columns = {key: [e[key] for e in examples[:4]] for key in examples[0]}
        batch = task.collate(columns, torch.Generator().manual_seed(0))
        batch["task_type_ids"] = torch.full_like(batch["input_ids"], task_id)
        batches[name] = batch

    class Holder(nn.Module):  # what the trainer passes: .model and .tasks
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.tasks = tasks

    got = gradient_telemetry(Holder(), batches, "last_layer")
    # independently: each task's loss, .backward() into .grad of the last layer, flatten
    layer = list(encoder.encoder.layer[-1].parameters())
    flat = {}
    for name, batch in batches.items():
        model.zero_grad()
        encoded = model(
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            batch["task_type_ids"],
            [name],
        )
        if hasattr(encoded, "for_task"):
            encoded = encoded.for_task(name)
        tasks[name].loss(model.heads[name], encoded, batch).mean().backward()
        flat[name] = torch.cat([p.grad.reshape(-1).clone() for p in layer])
    expected_cos = torch.nn.functional.cosine_similarity(flat["mlm"], flat["sentence_distance"], 0)
    assert got["cosine"]["mlm"]["sentence_distance"] == pytest.approx(float(expected_cos), abs=1e-5)
    assert got["cosine"]["sentence_distance"]["mlm"] == pytest.approx(float(expected_cos), abs=1e-5)
    for name in names:
        norm = float(torch.linalg.vector_norm(flat[name]))
        assert got["norms"][name] == pytest.approx(norm, rel=1e-5)
        assert got["cosine"][name][name] == pytest.approx(1.0, abs=1e-6)
    assert (
        abs(float(expected_cos)) > 1e-4
    )  # the two tasks' gradients are neither equal nor orthogonal
