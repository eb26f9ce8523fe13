"""GLUE data: official metrics against independent computations, every task folder's layout."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from scipy import stats

from ernie_cpt.experiments.glue import (
    GLUE_LAYOUTS,
    binary_f1,
    combine_splits,
    glue_name,
    matthews_corrcoef,
    parse_spec,
    ranking_metrics,
    resolve_all,
    resolve_data,
    split_metrics,
)

# Each GLUE task's files as distributed (header row and column order of the official TSVs),
# two or three rows each; "dev" rows differ from "train" rows so a swap would show.
GLUE_FILES: dict[str, dict[str, list[list[str]]]] = {
    "CoLA": {  # no header: source, label, original label, sentence
        "train.tsv": [
            ["gj04", "1", "", "Our friends won't buy this."],
            ["gj04", "0", "*", "Them buy."],
        ],
        "dev.tsv": [["cj99", "0", "*", "Dev bad sentence."], ["cj99", "1", "", "Dev good one."]],
    },
    "SST-2": {
        "train.tsv": [["sentence", "label"], ["a gorgeous film", "1"], ["dull", "0"]],
        "dev.tsv": [["sentence", "label"], ["dev fine film", "1"]],
    },
    "MRPC": {
        "train.tsv": [
            ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
            ["1", "702876", "702977", "He said it.", "It was said by him."],
            ["0", "2108705", "2108831", "Yucaipa owned it.", "Yucaipa sold it."],
        ],
        "dev.tsv": [
            ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
            ["0", "1", "2", "Dev a.", "Dev b."],
        ],
    },
    "STS-B": {
        "train.tsv": [
            [
                "index",
                "genre",
                "filename",
                "year",
                "old_index",
                "source1",
                "source2",
                "sentence1",
                "sentence2",
                "score",
            ],
            [
                "0",
                "main-captions",
                "MSRvid",
                "2012test",
                "0001",
                "none",
                "none",
                "A plane takes off.",
                "An air plane is taking off.",
                "5.000",
            ],
            [
                "1",
                "main-captions",
                "MSRvid",
                "2012test",
                "0004",
                "none",
                "none",
                "A man plays.",
                "A man sings.",
                "1.250",
            ],
        ],
        "dev.tsv": [
            [
                "index",
                "genre",
                "filename",
                "year",
                "old_index",
                "source1",
                "source2",
                "sentence1",
                "sentence2",
                "score",
            ],
            [
                "0",
                "main-captions",
                "MSRvid",
                "2012test",
                "0000",
                "none",
                "none",
                "Dev one.",
                "Dev two.",
                "3.800",
            ],
        ],
    },
    "QQP": {
        "train.tsv": [
            ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            ["133273", "213221", "213222", "How is the life?", "How is life?", "1"],
            ["402555", "536040", "536041", "A truncated row"],  # skipped, as the reference reader
            ["360472", "364011", "490273", "What is X?", "What is Y?", "0"],
        ],
        "dev.tsv": [
            ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            ["1", "2", "3", "Dev q1?", "Dev q2?", "0"],
        ],
    },
    "MNLI": {
        "train.tsv": [
            [
                "index",
                "promptID",
                "pairID",
                "genre",
                "sentence1_binary_parse",
                "sentence2_binary_parse",
                "sentence1_parse",
                "sentence2_parse",
                "sentence1",
                "sentence2",
                "label1",
                "gold_label",
            ],
            [
                "0",
                "31193",
                "31193n",
                "government",
                "( x )",
                "( y )",
                "(ROOT x)",
                "(ROOT y)",
                "Premise one.",
                "Hypothesis one.",
                "neutral",
                "neutral",
            ],
            [
                "1",
                "101457",
                "101457e",
                "telephone",
                "( x )",
                "( y )",
                "(ROOT x)",
                "(ROOT y)",
                "Premise two.",
                "Hypothesis two.",
                "entailment",
                "entailment",
            ],
        ],
        "dev_matched.tsv": [
            [
                "index",
                "promptID",
                "pairID",
                "genre",
                "sentence1_binary_parse",
                "sentence2_binary_parse",
                "sentence1_parse",
                "sentence2_parse",
                "sentence1",
                "sentence2",
                "label1",
                "label2",
                "label3",
                "label4",
                "label5",
                "gold_label",
            ],
            [
                "0",
                "63735",
                "63735n",
                "slate",
                "( x )",
                "( y )",
                "(ROOT x)",
                "(ROOT y)",
                "Matched p.",
                "Matched h.",
                "neutral",
                "entailment",
                "neutral",
                "neutral",
                "neutral",
                "contradiction",
            ],
        ],
        "dev_mismatched.tsv": [
            [
                "index",
                "promptID",
                "pairID",
                "genre",
                "sentence1_binary_parse",
                "sentence2_binary_parse",
                "sentence1_parse",
                "sentence2_parse",
                "sentence1",
                "sentence2",
                "label1",
                "label2",
                "label3",
                "label4",
                "label5",
                "gold_label",
            ],
            [
                "0",
                "75290",
                "75290c",
                "letters",
                "( x )",
                "( y )",
                "(ROOT x)",
                "(ROOT y)",
                "Mismatched p.",
                "Mismatched h.",
                "entailment",
                "entailment",
                "entailment",
                "entailment",
                "entailment",
                "entailment",
            ],
        ],
    },
    "QNLI": {
        "train.tsv": [
            ["index", "question", "sentence", "label"],
            ["0", "What came first?", "The egg did.", "entailment"],
            ["1", "Why?", "No reason.", "not_entailment"],
        ],
        "dev.tsv": [
            ["index", "question", "sentence", "label"],
            ["0", "Dev question?", "Dev sentence.", "not_entailment"],
        ],
    },
    "RTE": {
        "train.tsv": [
            ["index", "sentence1", "sentence2", "label"],
            ["0", "No weapons found.", "Weapons found.", "not_entailment"],
        ],
        "dev.tsv": [
            ["index", "sentence1", "sentence2", "label"],
            ["0", "Dev s1.", "Dev s2.", "entailment"],
        ],
    },
    "WNLI": {
        "train.tsv": [
            ["index", "sentence1", "sentence2", "label"],
            ["0", "I stuck a pin.", "I stuck it.", "1"],
            ["1", "A.", "B.", "0"],
        ],
        "dev.tsv": [["index", "sentence1", "sentence2", "label"], ["0", "Dev w1.", "Dev w2.", "0"]],
    },
}


def write_glue(root: Path, tasks: list[str] | None = None) -> Path:
    """Write the fixture folders above under ``root`` (all tasks unless ``tasks``)."""
    for task, files in GLUE_FILES.items():
        if tasks is not None and task not in tasks:
            continue
        (root / task).mkdir(parents=True, exist_ok=True)
        for name, rows in files.items():
            (root / task / name).write_text(
                "\n".join("\t".join(r) for r in rows) + "\n", encoding="utf-8"
            )
    return root


# -------------------------------------------------------------------------------- metrics
PREDICTIONS = [1, 1, 0, 1, 0, 0, 1, 0, 1, 1]
LABELS = [1, 0, 0, 1, 1, 0, 1, 0, 0, 1]


def test_mcc_equals_pearson_of_binary_vectors():
    # MCC of two 0/1 vectors is their Pearson correlation (phi coefficient)
    expected = stats.pearsonr(PREDICTIONS, LABELS).statistic
    assert matthews_corrcoef(PREDICTIONS, LABELS) == pytest.approx(expected, abs=1e-12)
    # tp=4 tn=3 fp=2 fn=1: (12 - 2) / sqrt(6 * 5 * 5 * 4)
    assert matthews_corrcoef(PREDICTIONS, LABELS) == pytest.approx(10 / math.sqrt(600))
    assert matthews_corrcoef([1, 1, 1], [0, 1, 1]) == 0.0  # an empty margin: sklearn's 0


def test_f1_of_the_positive_class_and_glue_scores():
    # tp=4, fp=2, fn=1 -> 2*4 / (8 + 2 + 1)
    assert binary_f1(PREDICTIONS, LABELS) == pytest.approx(8 / 11)
    assert binary_f1([0, 0], [1, 0]) == 0.0
    from ernie_cpt.experiments.glue import METRICS

    m = METRICS["f1_accuracy"](PREDICTIONS, LABELS)
    assert (m["f1"], m["accuracy"]) == (pytest.approx(8 / 11), 0.7)
    assert m["score"] == pytest.approx((8 / 11 + 0.7) / 2)
    cola = METRICS["mcc"](PREDICTIONS, LABELS)
    assert cola["score"] == cola["mcc"] == pytest.approx(10 / math.sqrt(600))


def test_pearson_and_spearman_against_scipy():
    predictions = [0.3, 2.5, 2.5, 4.1, 1.0, 3.3, 0.2]
    labels = [0.0, 2.0, 3.0, 5.0, 1.0, 2.0, 0.4]
    m = __import__("ernie_cpt.experiments.glue", fromlist=["METRICS"]).METRICS["pearson_spearman"](
        predictions, labels
    )
    pearson = stats.pearsonr(predictions, labels).statistic
    spearman = stats.spearmanr(predictions, labels).statistic  # ties on both sides
    assert m["pearson"] == pytest.approx(pearson, abs=1e-12)
    assert m["spearman"] == pytest.approx(spearman, abs=1e-12)
    assert m["score"] == pytest.approx((pearson + spearman) / 2)


def test_ranking_metrics_by_hand():
    scores = [0.9, 0.1, 0.5, 0.2, 0.8, 0.7, 0.3, 0.6]
    labels = [0, 1, 0, 1, 0, 0, 1, 0]
    groups = ["a", "a", "a", "b", "b", "c", "c", "d"]  # d has no relevant candidate: left out
    m = ranking_metrics(scores, labels, groups)
    # a: relevant ranked 3rd; b: relevant 2nd; c: relevant 2nd
    assert m["p_at_1"] == 0.0 and m["score"] == 0.0
    assert m["mrr"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert ranking_metrics([0.2, 0.1], [1, 0], ["q", "q"])["p_at_1"] == 1.0


def test_mnli_splits_combine_to_matched_and_mismatched_accuracy():
    combined = combine_splits(
        {
            "matched": {"accuracy": 0.8, "macro_f1": 0.7, "score": 0.8},
            "mismatched": {"accuracy": 0.6, "macro_f1": 0.5, "score": 0.6},
        }
    )
    assert combined["matched_accuracy"] == 0.8 and combined["mismatched_accuracy"] == 0.6
    assert combined["score"] == pytest.approx(0.7)
    assert combine_splits({"dev": {"accuracy": 0.5, "score": 0.5}}) == {
        "accuracy": 0.5,
        "score": 0.5,
    }


# -------------------------------------------------------------------------------- folders
def test_each_glue_folder_is_read_in_its_layout(tmp_path):
    root = write_glue(tmp_path)
    expect = {  # task: (train size, first train text_a, first text_b, first label, kind, metric)
        "CoLA": (2, "Our friends won't buy this.", None, 1, "single", "mcc"),
        "SST-2": (2, "a gorgeous film", None, 1, "single", "accuracy"),
        "MRPC": (2, "He said it.", "It was said by him.", 1, "pair", "f1_accuracy"),
        "STS-B": (
            2,
            "A plane takes off.",
            "An air plane is taking off.",
            5.0,
            "regression",
            "pearson_spearman",
        ),
        "QQP": (2, "How is the life?", "How is life?", 1, "pair", "f1_accuracy"),
        "MNLI": (2, "Premise one.", "Hypothesis one.", 2, "pair", "accuracy"),  # neutral = 2
        "QNLI": (2, "What came first?", "The egg did.", 0, "pair", "accuracy"),
        "RTE": (1, "No weapons found.", "Weapons found.", 1, "pair", "accuracy"),
        "WNLI": (2, "I stuck a pin.", "I stuck it.", 1, "pair", "accuracy"),
    }
    for task, (size, text_a, text_b, label, kind, metric) in expect.items():
        (loaded,) = resolve_data(str(root / task))
        assert loaded.name == task and loaded.metric == metric == GLUE_LAYOUTS[task].metric
        train = loaded.train
        assert (len(train), train.texts_a[0], train.task_type, train.labels[0]) == (
            size,
            text_a,
            kind,
            label,
        )
        assert (train.texts_b[0] if train.texts_b else None) == text_b
    cola = resolve_data(str(root / "CoLA"))[0]
    assert cola.devs["dev"].texts_a == ["Dev bad sentence.", "Dev good one."]  # no header lost
    mnli = resolve_data(str(root / "MNLI"))[0]
    assert set(mnli.devs) == {"matched", "mismatched"}
    assert mnli.devs["matched"].labels == [0] and mnli.devs["mismatched"].labels == [1]
    assert mnli.devs["matched"].texts_a == ["Matched p."]
    assert resolve_data(str(root / "STS-B"))[0].devs["dev"].labels == [3.8]


def test_a_glue_root_gives_every_task_and_names_can_be_given(tmp_path):
    root = write_glue(tmp_path / "glue", ["SST-2", "MRPC", "MNLI"])
    (root / "notes").mkdir()
    assert [t.name for t in resolve_data(str(root))] == ["MNLI", "MRPC", "SST-2"]
    (renamed,) = resolve_data(f"paraphrase={root / 'MRPC'}")
    assert renamed.name == "paraphrase" and renamed.metric == "f1_accuracy"
    other = tmp_path / "mine"
    (root / "MRPC").rename(other)  # a folder not named like a GLUE task: the name says which
    assert resolve_data(f"mrpc={other}")[0].metric == "f1_accuracy"
    with pytest.raises(ValueError, match="repeat"):
        resolve_all([str(root / "SST-2"), str(root / "SST-2")])
    assert parse_spec("a=b.tsv") == ("a", "b.tsv") and parse_spec("x/y.tsv") == (None, "x/y.tsv")
    assert glue_name("sst2") == "SST-2" and glue_name("sts_b") == "STS-B" and glue_name("x") is None


def test_train_dev_folder_files_and_hub_names(tmp_path):
    folder = tmp_path / "sentiment"
    folder.mkdir()
    (folder / "train.tsv").write_text("sentence\tlabel\nok\tpos\nbad\tneg\n")
    (folder / "dev.jsonl").write_text('{"sentence": "fine", "label": "pos"}\n')
    (task,) = resolve_data(str(folder))
    assert task.name == "sentiment" and task.train.label_names == ["neg", "pos"]
    assert task.devs["dev"].labels == [1]
    with pytest.raises(ValueError, match="glue/<task>"):
        resolve_data("glue/not_a_task")  # checked before anything is downloaded
    with pytest.raises(FileNotFoundError):
        resolve_data(str(tmp_path / "missing.tsv"))


def test_split_metrics_use_the_official_metric(tmp_path):
    (cola,) = resolve_data(str(write_glue(tmp_path, ["CoLA"]) / "CoLA"))
    # dev labels [0, 1]; predicting [0, 1] is perfect, [1, 1] has an empty margin
    assert split_metrics(cola, [0, 1], "dev")["score"] == 1.0
    assert split_metrics(cola, [1, 1], "dev")["mcc"] == 0.0


def test_a_file_that_is_not_utf8_is_a_one_line_error_naming_it(tmp_path):
    from ernie_cpt.errors import InputError
    from ernie_cpt.experiments.finetune import read_rows

    path = tmp_path / "latin1.tsv"
    path.write_bytes("sentence\tlabel\ncaf\xe9 au lait\t1\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.tsv is not UTF-8 text \(byte 18"):
        read_rows(path)
    folder = tmp_path / "SST-2"
    folder.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (folder / name).write_bytes(path.read_bytes())
    with pytest.raises(InputError, match=r"SST-2/(train|dev)\.tsv is not UTF-8 text"):
        resolve_data(str(folder))
