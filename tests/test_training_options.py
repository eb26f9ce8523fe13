"""Training options end to end (gradient accumulation, combine_token_tasks: false,
eval_every, the LR the trainer logs) and the ``tasks`` / ``schedule`` commands' exact output."""

from __future__ import annotations

import pytest
from helpers import evals, metrics, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def options_run(tmp_path_factory, cache_dir):
    """10 steps of the tiny config with accumulation 2, no attached token tasks, eval every 3."""
    import yaml
    from helpers import tiny_tree

    tree = tiny_tree(
        data={"cache_dir": str(cache_dir)},
        train={
            "gradient_accumulation_steps": 2,
            "combine_token_tasks": False,
            "eval_every": 3,
            "threads": 1,
        },
    )
    base = tmp_path_factory.mktemp("options")
    config = base / "config.yaml"
    config.write_text(yaml.safe_dump(tree))
    run_cli("train", str(config), "--output-dir", str(base / "run"), "--max-steps", "10")
    return base / "run"


def test_gradient_accumulation_takes_two_micro_batches_per_update(options_run):
    rows = metrics(options_run)
    assert [r["step"] for r in rows] == list(range(1, 11))
    sentence_steps = [r for r in rows if r["task"] == "sentence_distance"]
    assert sentence_steps  # steps 9-10 are in stage 2
    for row in sentence_steps:  # 2 micro-batches x micro_batch_size 4 examples
        assert row["samples"] == {"sentence_distance": 8}
    # the schedule advances once per update (24 planned steps, 2 warm-up steps; see
    # test_engine_config for the formula): update u (0-based) runs at lr (u + 1) / 2 in the
    # warm-up, then lr (24 - u) / 22
    expected = [0.5e-3, 1e-3] + [1e-3 * (24 - u) / 22 for u in range(2, 10)]
    assert [r["lr"] for r in rows] == pytest.approx(expected, abs=1e-12)


def test_combine_token_tasks_false_trains_sentence_tasks_alone(options_run):
    rows = metrics(options_run)
    for row in rows:
        assert set(row["losses"]) == {row["task"]}, row["step"]
        assert set(row["weights"]) == {row["task"]}


def test_eval_every_adds_periodic_evaluations(options_run):
    rows = evals(options_run)
    assert [(r["step"], r["stage"], r["kind"]) for r in rows] == [
        (0, -1, "initial"),
        (3, 0, "periodic"),
        (6, 0, "periodic"),
        (8, 0, "stage_end"),  # 8 is a stage end, not also a periodic evaluation
        (9, 1, "periodic"),
    ]
    for row in rows:
        assert set(row["metrics"]) == {"mlm", "sentence_distance"}


def test_tasks_command_lists_the_builtin_tasks():
    out = run_cli("tasks").stdout.splitlines()
    assert out == [
        "mlm                      baseline         token     Whole-word masked language model"
        " (the baseline objective).",
        "knowledge_masking        word-aware       token     Mask whole words, phrases or"
        " entities and predict their tokens (ERNIE 1.0).",
        "capitalization           word-aware       token     Predict from uncased input whether"
        " each word was capitalised.",
        "token_document_relation  word-aware       token     Predict whether each word of a"
        " segment also occurs in other segments of its document.",
        "sentence_reordering      structure-aware  sentence  Classify the permutation applied to"
        " the segments of a paragraph.",
        "sentence_distance        structure-aware  sentence  Classify a sentence pair as adjacent"
        " / same document / different documents.",
        "discourse_relation       semantic-aware   sentence  Classify the discourse relation (or"
        " marker) linking a sentence to the one before it.",
        "ir_relevance             semantic-aware   sentence  Classify a (query, passage) pair as"
        " strongly / weakly relevant or irrelevant.",
    ]


def test_schedule_command_prints_the_stage_table(tiny_config):
    # cmtl over mlm, sentence_distance, 12 iterations each: stage 1 trains mlm for 8 steps,
    # stage 2 the remaining 4 of mlm with all 12 of sentence_distance
    out = run_cli("schedule", str(tiny_config())).stdout
    rule = "-" * 94
    assert out.splitlines() == [
        "schedule cmtl: 2 stages, 24 steps",
        "stage   first step  last step  steps  sampling          weighting  tasks (steps)",
        rule,
        "stage1           0          7      8  remaining_budget  fixed      mlm=8",
        "stage2           8         23     16  remaining_budget  fixed      mlm=4"
        " sentence_distance=12",
        rule,
        "total                             24                               mlm=12"
        " sentence_distance=12",
    ]
    continual = run_cli(
        "schedule", str(tiny_config(schedule={"kind": "continual", "iterations_per_task": 5}))
    ).stdout.splitlines()
    assert continual[0] == "schedule continual: 2 stages, 10 steps"
    assert continual[3].split() == ["stage1", "0", "4", "5", "remaining_budget", "fixed", "mlm=5"]
    assert continual[4].split()[:4] == ["stage2", "5", "9", "5"]
    assert continual[4].split()[-1] == "sentence_distance=5"
