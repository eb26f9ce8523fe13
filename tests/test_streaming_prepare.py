"""Streaming preparation (issue 10 item 1): reservoir sentence pool, label counts summed over
batches, compressed JSON Lines read as a stream, the sentence splitter option, and
``prepare --shard i/N`` jobs whose shards training reads as one."""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from pathlib import Path

import datasets
import pytest
from helpers import tiny_tree

from ernie_cpt.config import DataConfig, TokenizerConfig, config_from_dict
from ernie_cpt.data.corpus import DataError, build_documents
from ernie_cpt.data.prepare import (
    SentencePool,
    parse_shard,
    prepare_data,
    summed_label_counts,
    token_count,
)
from ernie_cpt.data.segmentation import segment_text
from ernie_cpt.data.tokenization import train_wordpiece
from pretrain_tasks import build_task


def documents_of(sentence_counts: list[int]) -> datasets.Dataset:
    rows = [
        {
            "id": f"d{d}",
            "title": None,
            "paragraphs": [{"heading": None, "sentences": [f"s{d}.{i}" for i in range(n)]}],
        }
        for d, n in enumerate(sentence_counts)
    ]
    return datasets.Dataset.from_list(rows)


def test_pool_keeps_every_sentence_in_order_under_the_limit():
    pool = SentencePool.from_documents(documents_of([2, 1]), seed=3, limit=10)
    assert pool.sentences == ["s0.0", "s0.1", "s1.0"]
    assert pool.document_ids == ["d0", "d0", "d1"]


def test_pool_is_algorithm_r_over_the_sentence_stream():
    counts = [5, 300, 7, 600, 2] * 3
    pool = SentencePool.from_documents(documents_of(counts), seed=11, limit=50)
    # Algorithm R written out independently over the flat stream.
    stream = [(f"s{d}.{i}", f"d{d}") for d, n in enumerate(counts) for i in range(n)]
    rng = random.Random(11)
    reservoir = stream[:50]
    for seen, item in enumerate(stream[50:], start=51):
        slot = rng.randrange(seen)
        if slot < 50:
            reservoir[slot] = item
    assert list(zip(pool.sentences, pool.document_ids, strict=True)) == reservoir


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    words = "river mountain forest desert ocean valley island canyon wide old new long".split()
    texts = [f"The {a} is {b} and {c}." for a in words for b in words for c in words[:4]]
    out = tmp_path_factory.mktemp("tok")
    train_wordpiece(texts, TokenizerConfig(vocab_size=200, min_frequency=1), out)
    return out


def test_label_counts_summed_over_batches_equal_the_whole(tokenizer_dir):
    from ernie_cpt.data.tokenization import load_tokenizer

    task = build_task("sentence_reordering", {}, load_tokenizer(tokenizer_dir), 64)
    labels = [0, 1, 1, 2, 5, 5, 5, 0, 3, 1, 4]
    examples = datasets.Dataset.from_dict(
        {"input_ids": [[1] * (i + 2) for i in range(len(labels))], task.label_column: labels}
    )
    whole = task.label_counts(examples[:])
    assert summed_label_counts(task, examples, batch_size=3) == whole
    assert token_count(examples) == sum(i + 2 for i in range(len(labels))) == 77


def test_gzipped_json_lines_are_streamed(tmp_path):
    rows = [{"id": "a", "text": "One here. Two there."}, {"id": "b", "text": "Caf\xe9 ok."}]
    plain = tmp_path / "plain" / "c.jsonl"
    packed = tmp_path / "packed" / "c.jsonl.gz"
    plain.parent.mkdir()
    packed.parent.mkdir()
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    plain.write_bytes(data)
    packed.write_bytes(gzip.compress(data + b"\xff\xfe not json\n"))
    one = build_documents(DataConfig(corpus=str(plain), cache_dir=str(tmp_path / "c1")))
    two = build_documents(DataConfig(corpus=str(packed), cache_dir=str(tmp_path / "c2")))
    assert one[0].to_list() == two[0].to_list()
    assert two[2]["invalid_json"] == 1
    assert two[1]["bad_lines"] == {"invalid_json": ["c.jsonl.gz:3"]}


def test_sentence_splitter_option():
    text = "It was Dr. Who. Then he left."
    assert segment_text(text, 2000, "pysbd").paragraphs == [
        (None, ["It was Dr. Who.", "Then he left."])
    ]
    fast = segment_text(text, 2000, "sentencex").paragraphs
    assert fast == [(None, ["It was Dr.", "Who.", "Then he left."])]
    with pytest.raises(DataError, match="unknown data.sentence_splitter 'spacy'"):
        build_documents(DataConfig(sentence_splitter="spacy"))


def test_parse_shard():
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b"):
        with pytest.raises(DataError, match="expected i/N"):
            parse_shard(bad)


def shard_config(tmp_path: Path, tokenizer_dir: Path | None):
    words = "river mountain forest desert ocean valley island canyon".split()
    records = [
        {"id": f"d{i}", "text": f"The {w} is wide. The {w} is old. A {words[i % 3]} is new."}
        for i, w in enumerate(words * 3)
    ]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    tokenizer = {"path": str(tokenizer_dir)} if tokenizer_dir else {}
    tree = tiny_tree(
        data={"corpus": str(corpus), "max_documents": None, "heldout_fraction": 0.2},
        tokenizer=tokenizer,
        tasks={"mlm": {}},
    )
    return config_from_dict(tree)


def all_examples(data) -> Counter:
    rows = [*data.train["mlm"]["input_ids"], *data.heldout["mlm"]["input_ids"]]
    return Counter(tuple(r) for r in rows)


def test_shards_prepared_apart_are_read_as_one(tmp_path, tokenizer_dir):
    config = shard_config(tmp_path, tokenizer_dir)
    cache = tmp_path / "cache"
    parts = [prepare_data(config, cache, progress=False, shard=(i, 3)) for i in range(3)]
    assert sum(p.report["documents"]["raw_records"] for p in parts) == 24
    joined = prepare_data(config, cache, progress=False)
    assert not (joined.root / "data_report.json").exists()  # read from the shards
    assert joined.report["shards"] == 3
    assert joined.report["documents"]["raw_records"] == 24
    assert len(joined.train["mlm"]) == sum(len(p.train["mlm"]) for p in parts)
    # Only shard documents were ever built: reading the shards needs no corpus pass.
    assert all("-of-3" in d.name for d in (cache / "documents").iterdir())
    whole = prepare_data(config, tmp_path / "unsharded", progress=False)
    assert all_examples(joined) == all_examples(whole)


def test_shard_needs_a_fixed_tokenizer(tmp_path):
    with pytest.raises(DataError, match="--shard needs tokenizer.path"):
        prepare_data(shard_config(tmp_path, None), tmp_path / "c", progress=False, shard=(0, 2))
