"""Adding tasks to a resumed run: parameters and Adam moments move by name between engines."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import cli_env, run_cli
from torch import nn

from ernie_cpt.training.add_tasks import fit, read_parameter_states, transfer


class Toy(nn.Module):
    """A shared encoder, a task embedding and one head per task."""

    def __init__(self, heads: list[str], task_rows: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.task_embedding = nn.Embedding(task_rows, 8)
        self.encoder = nn.Linear(4, 8)
        self.heads = nn.ModuleDict({h: nn.Linear(8, 2) for h in heads})

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        hidden = self.encoder(x) + self.task_embedding(torch.full((x.shape[0],), task))
        return sum(head(hidden).pow(2).mean() for head in self.heads.values())


def engine_for(deepspeed, module: nn.Module, zero_stage: int):
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
        "zero_optimization": {"stage": zero_stage},
    }
    engine, *_ = deepspeed.initialize(
        model=module, model_parameters=module.parameters(), config=config
    )
    return engine


def test_fit_grows_rows_and_refuses_other_shapes():
    saved, current = torch.ones(2, 3), torch.zeros(4, 3)
    grown = fit(saved, current)
    assert grown.tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 0]]
    assert fit(torch.ones(2, 3), torch.zeros(2, 4)) is None
    assert fit(saved, torch.zeros(2, 3)) is saved


@pytest.mark.parametrize("zero_stage", [0, 1, 2])
def test_transfer_keeps_parameters_and_moments_and_adds_the_new_head(distributed, zero_stage):
    old = engine_for(distributed, Toy(["a"], task_rows=1), zero_stage)
    for _ in range(3):
        loss = old(torch.randn(2, 4), 0)
        old.backward(loss)
        old.step()
    before, step = read_parameter_states(old)
    assert step == 3.0 and set(before["encoder.weight"]) == {"param", "exp_avg", "exp_avg_sq"}
    new = engine_for(distributed, Toy(["a", "b"], task_rows=2), zero_stage)
    fresh = transfer(old, new)
    assert sorted(fresh) == ["heads.b.bias", "heads.b.weight"]
    after, new_step = read_parameter_states(new)
    assert new_step == 3.0
    for name in ("encoder.weight", "encoder.bias", "heads.a.weight", "heads.a.bias"):
        for key in ("param", "exp_avg", "exp_avg_sq"):
            assert torch.equal(after[name][key], before[name][key]), (name, key)
    # the task embedding grew from 1 to 2 rows: row 0 kept, row 1 fresh with zero moments
    assert torch.equal(
        after["task_embedding.weight"]["param"][0], before["task_embedding.weight"]["param"][0]
    )
    assert torch.equal(after["task_embedding.weight"]["exp_avg"][1], torch.zeros(8))
    assert torch.equal(
        new.module.encoder.weight.detach().float(), before["encoder.weight"]["param"]
    )
    loss = new(torch.randn(2, 4), 1)  # and the new engine trains
    new.backward(loss)
    new.step()


@pytest.mark.slow
def test_resume_a_finished_stage_with_an_added_task(tiny_config, tmp_path):
    first = [{"name": "words", "budgets": {"mlm": 6}}]
    second = first + [{"name": "pairs", "budgets": {"mlm": 3, "sentence_distance": 6}}]
    before = tiny_config(tasks={"mlm": {}}, schedule={"kind": "custom", "stages": first})
    after = tiny_config(
        tasks={"mlm": {}, "sentence_distance": {}}, schedule={"kind": "custom", "stages": second}
    )
    run_dir = tmp_path / "run"
    run_cli("train", str(before), "--output-dir", str(run_dir))
    rows_before = (run_dir / "metrics.jsonl").read_text().splitlines()
    resumed = run_cli(
        "train", str(after), "--output-dir", str(run_dir), "--resume", "must", env=cli_env()
    )
    assert "added tasks ['sentence_distance']" in resumed.stderr
    assert "start fresh: ['model.heads.sentence_distance" in resumed.stderr
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert rows[:6] == rows_before and len(rows) == 15
    parsed = [json.loads(row) for row in rows]
    assert {r["stage"] for r in parsed[6:]} == {1}
    assert sum("sentence_distance" in r["losses"] for r in parsed[6:]) == 6
    state = json.loads(
        (run_dir / "checkpoints" / "step-00000015" / "trainer_state.json").read_text()
    )
    assert state["train_state"]["task_ids"] == {"mlm": 0, "sentence_distance": 1}
    # changing a stage already trained is refused
    changed = tiny_config(
        tasks={"mlm": {}, "sentence_distance": {}, "capitalization": {}},
        schedule={
            "kind": "custom",
            "stages": [{"name": "words", "budgets": {"mlm": 5}}, *second[1:]],
        },
    )
    refused = run_cli("train", str(changed), "--output-dir", str(run_dir), check=False)
    assert refused.returncode != 0 and "cannot add tasks" in refused.stderr
