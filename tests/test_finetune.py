"""MT-DNN fine-tuning: the listwise ranking loss, batch mixing, single-task parity with
``evaluate``, and ``ernie-cpt finetune --multitask`` end to end on a tiny export."""

from __future__ import annotations

import json
import math
import random
import statistics
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import cli_env, run_cli

from ernie_cpt.experiments.finetune import FinetuneConfig, LabelledData, finetune_once
from ernie_cpt.experiments.glue import DownstreamTask, resolve_data
from ernie_cpt.experiments.mtdnn import (
    MultitaskConfig,
    batch_counts,
    epoch_batches,
    finetune_tasks,
    listwise_ranking_loss,
    plan_steps,
    task_order,
)

FAST = FinetuneConfig(epochs=1, lr=1e-3, batch_size=8, threads=1)
WORDS = "good bad great awful fine poor nice terrible lovely horrible".split()
POSITIVE = {"good", "great", "fine", "nice", "lovely"}


def sentiment_tsv(path: Path, rows: int = 40, seed: int = 0) -> Path:
    """Three words per sentence; label 1 when most are positive."""
    r = random.Random(seed)
    lines = ["sentence\tlabel"]
    for _ in range(rows):
        words = r.sample(WORDS, 3)
        lines.append(f"{' '.join(words)}\t{int(sum(w in POSITIVE for w in words) >= 2)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def ranking_tsv(path: Path, queries: int = 10, seed: int = 0) -> Path:
    """QNLI-style ranking rows: each query has one relevant passage among three."""
    r = random.Random(seed)
    lines = ["qid\tquery\tpassage\tlabel"]
    for q in range(queries):
        word = r.choice(WORDS)
        others = r.sample([w for w in WORDS if w != word], 2)
        for k, passage in enumerate([word, *others]):
            lines.append(f"q{q}\twhich is {word}\tit is {passage}\t{int(k == 0)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, tokenizer, encoder_config) -> Path:
    """An untrained tiny ERNIE encoder + tokenizer saved like ``export/``."""
    from transformers import ErnieModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("export")
    ErnieModel(encoder_config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def _task(name: str, size: int) -> DownstreamTask:
    train = LabelledData(
        [f"t{i}" for i in range(size)], None, [i % 2 for i in range(size)], "single", ["0", "1"]
    )
    return DownstreamTask(name, train, {"dev": train}, "accuracy")


# ------------------------------------------------------------------------------ pure parts
def test_listwise_ranking_loss_matches_the_formula():
    scores = torch.tensor([1.0, 2.0, 0.5, 3.0, -1.0, 0.7])
    labels = torch.tensor([1, 0, 0, 0, 1, 0])
    groups = torch.tensor([0, 0, 0, 1, 1, 2])  # list 2 has no relevant candidate
    gamma = 2.0
    first = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(4.0) + math.exp(1.0)))
    second = -math.log(math.exp(-2.0) / (math.exp(6.0) + math.exp(-2.0)))
    loss = listwise_ranking_loss(scores, labels, groups, gamma)
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)
    two_relevant = listwise_ranking_loss(
        torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1, 1, 0]), torch.tensor([5, 5, 5])
    )
    z = 1 + math.e + math.e**2
    assert two_relevant.item() == pytest.approx((math.log(z) + math.log(z / math.e)) / 2, rel=1e-6)


def test_batches_are_drawn_in_proportion_to_size_deterministically():
    tasks = [_task("big", 40), _task("small", 8)]
    config = FinetuneConfig(epochs=2, batch_size=4)
    plan = plan_steps(tasks, config, 1.0, seed=3)
    assert Counter(i for i, _ in plan) == {0: 20, 1: 4}  # 10 + 2 batches per epoch
    for epoch in (plan[:12], plan[12:]):  # each epoch sees every row of every task once
        for i, size in ((0, 40), (1, 8)):
            assert sorted(r for t, rows in epoch if t == i for r in rows) == list(range(size))
    assert plan == plan_steps(tasks, config, 1.0, seed=3)
    assert [i for i, _ in plan] != [i for i, _ in plan_steps(tasks, config, 1.0, seed=4)]
    assert batch_counts([16, 4], 2.0) == [13, 7]  # 20 x (4, 2)/6 = 13.3, 6.7: largest remainder
    assert batch_counts([16, 4], 1000.0) == [10, 10]
    assert batch_counts([16, 4], 1.0) == [16, 4]
    assert sorted(task_order([3, 1], random.Random(0))) == [0, 0, 0, 1]


def test_ranking_batches_keep_candidate_lists_whole(tmp_path):
    (task,) = resolve_data(str(ranking_tsv(tmp_path / "rank.tsv", queries=10)))
    assert task.metric == "ranking" and task.train.task_type == "ranking"
    assert (
        len(set(task.train.groups)) == 8 and len(set(task.devs["dev"].groups)) == 2
    )  # 20% of lists
    batches = epoch_batches(task, 7, torch.Generator().manual_seed(0))
    groups = task.train.groups
    for batch in batches:
        members = {groups[r] for r in batch}
        assert all(
            sum(g == m for g in groups) == sum(groups[r] == m for r in batch) for m in members
        )
        assert len(batch) == 6  # two lists of three fit in 7
    assert sorted(r for b in batches for r in b) == list(range(len(task.train)))


# --------------------------------------------------------------------------------- training
def test_single_task_finetune_reproduces_evaluate(tmp_path, tiny_export):
    path = sentiment_tsv(tmp_path / "s.tsv", 40)
    (task,) = resolve_data(str(path))
    expected = finetune_once(tiny_export, task.train, task.devs["dev"], FAST, seed=1)
    result = finetune_tasks(
        tiny_export,
        [task],
        seeds=2,
        config=FAST,
        mt=MultitaskConfig(multitask=False, device="cpu"),
        progress=False,
    )
    got = result["tasks"][task.name]["per_seed"][1]
    assert got == expected  # the same numbers, not just close
    assert result["mode"] == "single" and result["score"] == result["tasks"][task.name]["median"]


def test_multitask_with_a_ranking_task_and_then_single(tmp_path, tiny_export):
    tasks = [
        *resolve_data(f"sent={sentiment_tsv(tmp_path / 's.tsv', 30)}"),
        *resolve_data(str(ranking_tsv(tmp_path / "rank.tsv", 8))),
    ]
    mt = MultitaskConfig(then_single=True)
    result = finetune_tasks(
        tiny_export, tasks, seeds=1, config=FAST, mt=mt, output_dir=tmp_path / "out", progress=False
    )
    assert result["mode"] == "then_single" and set(result["tasks"]) == {"sent", "rank"}
    assert set(result["tasks"]["rank"]) >= {"p_at_1", "mrr", "score", "median"}
    assert set(result["multitask_stage"]["tasks"]) == {"sent", "rank"}
    saved = json.loads((tmp_path / "out" / "seed-0.json").read_text())["result"]
    assert set(saved) == {"multitask", "then_single"}
    assert saved["then_single"]["rank"]["score"] == result["tasks"]["rank"]["score"]


@pytest.mark.slow
def test_finetune_command_multitask_end_to_end(tmp_path, tiny_export):
    from test_glue import write_glue

    glue = write_glue(tmp_path / "glue", ["MRPC"])
    mrpc = glue / "MRPC"
    rows = (mrpc / "train.tsv").read_text().splitlines()
    (mrpc / "train.tsv").write_text("\n".join([rows[0], *rows[1:] * 8]) + "\n")
    data = sentiment_tsv(tmp_path / "sentiment.tsv", 30)
    out, result_file = tmp_path / "ft", tmp_path / "result.json"
    args = ["finetune", str(tiny_export), "--data", str(data), "--data", str(mrpc), "--multitask"]
    args += [
        "--output-dir",
        str(out),
        "--seeds",
        "3",
        "--epochs",
        "1",
        "--lr",
        "1e-3",
        "--threads",
        "1",
    ]
    done = run_cli(*args, "--out", str(result_file), env=cli_env())
    printed = json.loads(done.stdout)
    assert printed == json.loads(result_file.read_text())
    assert set(printed["tasks"]) == {"sentiment", "MRPC"} and printed["mode"] == "multitask"
    for task in printed["tasks"].values():
        assert task["median"] == statistics.median(task["scores"]) and len(task["scores"]) == 3
    assert printed["tasks"]["MRPC"]["metric"] == "f1_accuracy" and "f1" in printed["tasks"]["MRPC"]
    assert printed["score"] == pytest.approx(
        statistics.fmean(t["median"] for t in printed["tasks"].values())
    )
    assert "seed 0 multitask" in done.stderr  # a progress bar per phase on stderr
    again = run_cli(*args, env=cli_env())  # resumes from the per-seed files
    assert json.loads(again.stdout)["tasks"] == printed["tasks"]
    assert "seed 0 multitask" not in again.stderr


# ----------------------------------------------------------------------- compare --downstream
def test_compare_fine_tunes_each_model_once_on_every_task(tmp_path, tiny_export):
    import shutil

    from test_glue import write_glue

    from ernie_cpt.experiments.compare import DownstreamPlan, downstream_all, load_downstream

    plan = {
        "runs": [
            {"schedule": "cmtl", "seed": 0, "train_seed": 0, "schedule_seed": 0, "total_steps": 4}
        ]
    }
    run_dir = tmp_path / "cmp" / "runs" / "cmtl-seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "compare_done.json").write_text(json.dumps({"finished": "2026-12-01T00:00:00"}))
    shutil.copytree(tiny_export, run_dir / "export")
    glue = write_glue(tmp_path / "glue", ["RTE"])
    rows = (glue / "RTE" / "train.tsv").read_text().splitlines()
    (glue / "RTE" / "train.tsv").write_text("\n".join([rows[0], *rows[1:] * 12]) + "\n")
    files = (str(sentiment_tsv(tmp_path / "sst.tsv", 20)), str(glue))
    downstream = DownstreamPlan(files, seeds=1, finetune=FAST, multitask=MultitaskConfig())
    said: list[str] = []
    downstream_all(tmp_path / "cmp", plan, downstream, said.append)
    results = load_downstream(run_dir, downstream)
    assert set(results) == {"final"} and set(results["final"]) == {"sst", "RTE"}
    assert (
        results["final"]["RTE"]["metric"] == "accuracy"
        and len(results["final"]["sst"]["scores"]) == 1
    )
    assert said[0] == "downstream sst, RTE on cmtl-seed0 (final): 1 seeds"
    downstream_all(tmp_path / "cmp", plan, downstream, said.append)
    assert len(said) == 2  # cached: nothing fine-tuned again
    (tmp_path / "sst.tsv").write_text((tmp_path / "sst.tsv").read_text() + "good fine nice\t1\n")
    assert load_downstream(run_dir, downstream) == {}  # new data content: a new evaluation


def test_downstream_r_matrix_table():
    from ernie_cpt.experiments.report import downstream_r_table

    def spread(mean: float) -> dict:
        return {"mean": mean, "std": 0.0, "n": 1}

    schedule = {
        "stage_names": ["mlm", "mlm+sentence_distance"],
        "downstream": {"sst": {"median": spread(0.75)}, "RTE": {"median": spread(0.5)}},
        "downstream_stages": {"sst": {"stage1": spread(0.625)}, "RTE": {"stage1": spread(0.25)}},
    }
    lines = downstream_r_table({"schedules": {"cmtl": schedule}}, "cmtl")
    assert lines == [
        "| after | RTE | sst |",
        "|---|---|---|",
        "| 1: mlm | 0.250 | 0.625 |",
        "| 2: mlm+sentence_distance (final) | 0.500 | 0.750 |",
    ]
