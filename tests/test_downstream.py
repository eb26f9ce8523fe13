"""Downstream fine-tuning: reading labelled files, metrics, and k-seed medians on a tiny export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import cli_env, run_cli
from scipy import stats

from ernie_cpt.experiments.finetune import (
    FinetuneConfig,
    classification_metrics,
    evaluate_model,
    find_fields,
    infer_task_type,
    load_labelled,
    ranks,
    regression_metrics,
    split_dev,
)

GENSIM_DATA = Path(__import__("gensim").__file__).parent / "test" / "test_data"
FAST = FinetuneConfig(epochs=1, lr=1e-3, batch_size=16, threads=1)


def polarity_tsv(path: Path, limit: int = 200) -> Path:
    """gensim's 200-sentence movie-review polarity set as a GLUE-style TSV (sentence, label)."""
    lines = (GENSIM_DATA / "pang_lee_polarity.cor").read_text(encoding="latin-1").splitlines()
    rows = ["sentence\tlabel"]
    for line in lines[:limit]:
        label, text = line.split(" ", 1)
        rows.append(f"{text.strip()}\t{label.removeprefix('__label__')}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def simlex_jsonl(path: Path, limit: int = 120) -> Path:
    """SimLex-999 word pairs with their similarity: sentence-pair regression as JSON lines."""
    rows = []
    for line in (GENSIM_DATA / "simlex999.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        a, b, score = line.split("\t")[:3]
        rows.append(json.dumps({"text_a": a, "text_b": b, "label": float(score) + 0.5}))
    path.write_text("\n".join(rows[:limit]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, tokenizer, encoder_config) -> Path:
    """An untrained tiny ERNIE encoder + tokenizer saved like ``export/`` (AutoModel-loadable)."""
    import torch
    from transformers import ErnieModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("export")
    ErnieModel(encoder_config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def test_fields_and_task_types(tmp_path):
    assert find_fields(["sentence", "label"]) == ("sentence", None, "label")
    assert find_fields(["sentence1", "sentence2", "gold_label"]) == (
        "sentence1",
        "sentence2",
        "gold_label",
    )
    assert find_fields(["q", "t", "y"], ["q", "t"], "y") == ("q", "t", "y")
    with pytest.raises(ValueError, match="no label field"):
        find_fields(["text"])
    assert infer_task_type(["0", "1"], False) == "single"
    assert infer_task_type(["0", "1"], True) == "pair"
    assert infer_task_type(["0.5", "3"], True) == "regression"
    assert infer_task_type(["pos", "neg"], False) == "single"

    data = load_labelled(polarity_tsv(tmp_path / "p.tsv"))
    assert (data.task_type, data.label_names, len(data)) == ("single", ["neg", "pos"], 200)
    train, dev = split_dev(data, 0.2, seed=0)
    assert (len(train), len(dev)) == (160, 40)
    assert set(train.texts_a).isdisjoint(dev.texts_a)
    assert split_dev(data, 0.2, seed=0)[1].texts_a == dev.texts_a  # fixed for every model
    pairs = load_labelled(simlex_jsonl(tmp_path / "s.jsonl"))
    assert pairs.task_type == "regression" and pairs.texts_b is not None


def test_metrics_exact():
    m = classification_metrics([0, 1, 1, 0], [0, 1, 0, 0])
    assert m["accuracy"] == 0.75 and m["score"] == 0.75
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    r = regression_metrics([1.0, 2.0, 3.0], [2.0, 4.0, 7.0])
    # by hand: deviations (-1, 0, 1) and (-7/3, -1/3, 8/3): r = 5 / sqrt(2 * 114/9)
    assert r["pearson"] == pytest.approx(15 / math.sqrt(228), rel=1e-12)
    assert r["pearson"] == pytest.approx(stats.pearsonr([1, 2, 3], [2, 4, 7]).statistic, rel=1e-12)
    assert r["spearman"] == pytest.approx(1.0) and r["score"] == r["pearson"]
    assert math.isnan(regression_metrics([1.0, 1.0], [0.0, 1.0])["pearson"])


def test_evaluate_gives_a_finite_median_over_two_seeds(tmp_path, tiny_export):
    result = evaluate_model(tiny_export, polarity_tsv(tmp_path / "p.tsv"), seeds=2, config=FAST)
    assert len(result["scores"]) == 2 and math.isfinite(result["median"])
    assert (
        result["median"]
        == sorted(result["scores"])[0]
        + (sorted(result["scores"])[1] - sorted(result["scores"])[0]) / 2
    )
    assert result["task_type"] == "single" and result["dev_size"] == 40
    again = evaluate_model(tiny_export, tmp_path / "p.tsv", seeds=1, config=FAST)
    assert again["scores"][0] == result["scores"][0]  # a seed is reproducible


def test_evaluate_with_a_dev_file_and_regression(tmp_path, tiny_export):
    data = simlex_jsonl(tmp_path / "s.jsonl", 120)
    rows = data.read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(rows[:90]) + "\n")
    (tmp_path / "dev.jsonl").write_text("\n".join(rows[90:]) + "\n")
    result = evaluate_model(
        tiny_export, tmp_path / "train.jsonl", dev_path=tmp_path / "dev.jsonl", seeds=2, config=FAST
    )
    assert result["task_type"] == "regression" and result["metric"] == "pearson"
    assert (result["train_size"], result["dev_size"]) == (90, 30)
    assert [m["pearson"] for m in result["per_seed"]] == result["scores"]
    # the same fine-tuning through ernie-cpt finetune's loop gives the same dev correlations
    from ernie_cpt.experiments.glue import resolve_data
    from ernie_cpt.experiments.mtdnn import MultitaskConfig, finetune_tasks

    (task,) = resolve_data(str(tmp_path))  # the folder's train.jsonl + dev.jsonl
    again = finetune_tasks(
        tiny_export,
        [task],
        seeds=2,
        config=FAST,
        mt=MultitaskConfig(multitask=False, device="cpu"),
        progress=False,
    )
    # (evaluate scores against the float32 label tensor, finetune against the file's labels)
    assert again["tasks"][task.name]["scores"] == pytest.approx(result["scores"], rel=1e-6)


@pytest.mark.slow
def test_evaluate_command(tmp_path, tiny_export):
    data = polarity_tsv(tmp_path / "p.tsv", 200)
    out = tmp_path / "result.json"
    args = ["evaluate", str(tiny_export), "--data", str(data), "--seeds", "2", "--epochs", "1"]
    args += ["--lr", "1e-3", "--threads", "1", "--out", str(out)]
    result = run_cli(*args, env=cli_env())
    printed = json.loads(result.stdout)
    assert printed == json.loads(out.read_text())
    assert math.isfinite(printed["median"]) and len(printed["scores"]) == 2
