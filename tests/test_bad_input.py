"""Bad input is counted, not fatal (issue 9 item 8): bad JSON lines, .txt titles, deep
nesting, empty tasks, an empty corpus and a directory that is not a tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, cli_env, run_cli, tiny_tree

from ernie_cpt.config import DataConfig, config_from_dict
from ernie_cpt.data.corpus import DataError, build_documents
from ernie_cpt.data.prepare import prepare_data

GOOD = "First sentence here. Second sentence there."


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_bad_json_lines_are_skipped_and_counted_with_line_numbers(tmp_path):
    path = write_lines(
        tmp_path / "bad.jsonl",
        [
            json.dumps({"id": "a", "text": GOOD}),
            '{"id": "b", "text": "unterminated',  # 2: malformed
            json.dumps(["an", "array"]),  # 3: not an object
            json.dumps({"id": "c", "text": 5}),  # 4: non-string text
            "",  # 5: blank, ignored
            json.dumps({"id": "d", "text": GOOD}),
            '{"id": "e", "text": "trunc',  # 7: truncated last line
        ],
    )
    config = DataConfig(corpus=str(path), cache_dir=str(tmp_path / "cache"))
    documents, stats, skipped = build_documents(config, num_proc=1, progress=False)
    assert documents["id"][:] == ["a", "d"]
    assert skipped["invalid_json"] == 2
    assert skipped["not_an_object"] == 1
    assert skipped["non_string_text"] == 1
    assert skipped["too_deeply_nested"] == 0
    assert stats["bad_lines"] == {
        "invalid_json": ["bad.jsonl:2", "bad.jsonl:7"],
        "not_an_object": ["bad.jsonl:3"],
        "non_string_text": ["bad.jsonl:4"],
    }
    assert stats["raw_records"] == 6 == stats["documents"] + sum(skipped.values())


DEEP_SCRIPT = """
import json, sys
from ernie_cpt.config import DataConfig
from ernie_cpt.data.corpus import build_documents
config = DataConfig(corpus=sys.argv[1], cache_dir=sys.argv[2])
documents, stats, skipped = build_documents(config, num_proc=1, progress=False)
print(json.dumps([documents["id"][:], skipped["too_deeply_nested"], stats["bad_lines"]]))
"""


def test_deeply_nested_row_is_rejected_before_any_native_reader(tmp_path):
    # pyarrow's JSON reader segfaults on this row (rc -11): run it in a child process.
    deep = '{"id": "deep", "text": "x", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = write_lines(tmp_path / "deep.jsonl", [json.dumps({"id": "a", "text": GOOD}), deep])
    result = subprocess.run(
        [sys.executable, "-c", DEEP_SCRIPT, str(path), str(tmp_path / "cache")],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    ids, count, bad_lines = json.loads(result.stdout.strip().splitlines()[-1])
    assert ids == ["a"]
    assert count == 1
    assert bad_lines == {"too_deeply_nested": ["deep.jsonl:2"]}


def test_txt_file_names_are_titles(tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "Ada_Lovelace.txt").write_text("Ada wrote notes. They were long.\n")
    (folder / "Alan_Turing.txt").write_text("Alan wrote a paper. It was read.\n")
    config = DataConfig(corpus=str(folder), cache_dir=str(tmp_path / "cache"))
    documents, _, _ = build_documents(config, num_proc=1, progress=False)
    assert documents["id"][:] == ["Ada_Lovelace.txt", "Alan_Turing.txt"]
    assert documents["title"][:] == ["Ada Lovelace", "Alan Turing"]


def one_sentence_corpus(tmp_path: Path) -> Path:
    words = ["river", "mountain", "forest", "desert", "ocean", "valley", "island", "canyon"]
    records = [{"id": f"d{i}", "text": f"The {w} is wide and old."} for i, w in enumerate(words)]
    return write_lines(tmp_path / "one.jsonl", [json.dumps(r) for r in records])


def empty_task_config(tmp_path: Path, **data: object):
    tree = tiny_tree(
        data={"corpus": str(one_sentence_corpus(tmp_path)), "max_documents": None, **data},
        tokenizer={"vocab_size": 200, "min_frequency": 1},
        tasks={"mlm": {}, "sentence_distance": {}, "sentence_reordering": {}},
    )
    return config_from_dict(tree), tree


def test_every_task_without_examples_is_listed_with_reasons_and_remedy(tmp_path):
    config, _ = empty_task_config(tmp_path)
    with pytest.raises(DataError) as error:
        prepare_data(config, cache_dir=tmp_path / "cache", progress=False)
    message = str(error.value)
    assert "2 task(s) have no training examples" in message
    assert "sentence_distance: skipped documents by reason: fewer_than_two_sentences: " in message
    assert "sentence_reordering: skipped documents by reason: no_paragraph_with_two_" in message
    assert "mlm:" not in message
    assert "data.on_empty_task: skip" in message


def test_on_empty_task_skip_drops_them(tmp_path):
    config, _ = empty_task_config(tmp_path, on_empty_task="skip")
    data = prepare_data(config, cache_dir=tmp_path / "cache", progress=False)
    assert list(data.tasks) == ["mlm"] == list(data.train) == list(data.heldout)
    assert data.report["dropped_empty_tasks"] == ["sentence_distance", "sentence_reordering"]


@pytest.mark.slow
def test_prepare_exits_nonzero_when_a_task_is_empty(tmp_path):
    _, tree = empty_task_config(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(tree))  # JSON is YAML
    result = run_cli("prepare", str(path), "--cache-dir", str(tmp_path / "c"), check=False)
    assert result.returncode == 2
    assert "sentence_distance" in result.stderr and "sentence_reordering" in result.stderr
    assert "Traceback" not in result.stderr


def test_empty_corpus_is_a_one_line_error_naming_it(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "empty.txt").write_text("")
    config = config_from_dict(tiny_tree(data={"corpus": str(folder), "max_documents": None}))
    with pytest.raises(DataError, match=f"corpus '{folder}': no documents"):
        prepare_data(config, cache_dir=tmp_path / "cache", progress=False)


def test_text_file_too_long_for_one_document_names_the_setting(tmp_path):
    text = "\n\n".join(f"Document {i} has one sentence. And a second one." for i in range(40))
    path = tmp_path / "wiki.txt"
    path.write_text(text)
    data = {"corpus": str(path), "max_documents": None, "max_document_chars": 100}
    # Over 4 bytes per allowed character: refused before it is read.
    with pytest.raises(DataError, match="text_sample_by: paragraph"):
        prepare_data(config_from_dict(tiny_tree(data=data)), tmp_path / "c1", progress=False)
    # Possibly short enough: read, skipped as too long, and the error says why.
    data["max_document_chars"] = len(text) - 1
    with pytest.raises(DataError, match=r"document_too_long: 1\).*text_sample_by: paragraph"):
        prepare_data(config_from_dict(tiny_tree(data=data)), tmp_path / "c2", progress=False)
    # As the message says: one document per blank-line block.
    documents, _, _ = build_documents(
        DataConfig(corpus=str(path), text_sample_by="paragraph", cache_dir=str(tmp_path / "c3")),
        num_proc=1,
        progress=False,
    )
    assert documents.num_rows == 40


def test_directory_that_is_not_a_tokenizer_is_named(tmp_path):
    folder = tmp_path / "not_a_tokenizer"
    folder.mkdir()
    (folder / "notes.md").write_text("hello")
    config = config_from_dict(tiny_tree(tokenizer={"path": str(folder)}))
    with pytest.raises(DataError, match=f"tokenizer.path '{folder}' is not a tokenizer directory"):
        prepare_data(config, cache_dir=tmp_path / "cache", progress=False)


@pytest.mark.slow
def test_train_with_on_empty_task_skip_trains_the_other_tasks(tmp_path):
    _, tree = empty_task_config(tmp_path, on_empty_task="skip")
    tree["schedule"] = {"kind": "multitask", "iterations_per_task": 2}
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(tree))
    run = tmp_path / "run"
    run_cli("train", str(path), "--output-dir", str(run), "--cache-dir", str(tmp_path / "c"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["task"] for row in rows] == ["mlm", "mlm"]  # 2 iterations of the one task left
    assert "sentence_distance" not in (run / "config.yaml").read_text()
