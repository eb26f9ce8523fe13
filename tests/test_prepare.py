"""Preparation: deterministic for a seed whatever the number of workers; report; registry plug-ins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ernie_cpt.config import config_from_dict


def small_corpus(path: Path) -> Path:
    rows = []
    for d in range(8):
        sentences = [
            f"Document {d} sentence {i} mentions Paris and London in {1900 + i}." for i in range(6)
        ]
        rows.append({"id": f"d{d}", "title": f"Title {d}", "text": " ".join(sentences)})
    rows.append({"id": "single", "text": "Only one sentence."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prepare(tmp_path: Path, num_proc: int, tokenizer: Path):
    from ernie_cpt.data.prepare import prepare_data

    config = config_from_dict(
        {
            "tokenizer": {"path": str(tokenizer)},
            "data": {
                "corpus": str(small_corpus(tmp_path / "corpus.jsonl")),
                "max_seq_length": 48,
                "num_proc": num_proc,
                "heldout_fraction": 0.2,
            },
            "tasks": {"mlm": {}, "sentence_distance": {}, "sentence_reordering": {}},
        }
    )
    return prepare_data(config, cache_dir=tmp_path / f"cache-{num_proc}", progress=False)


@pytest.mark.slow
def test_prepared_examples_do_not_depend_on_the_number_of_workers(tmp_path, tokenizer):
    tokenizer.save_pretrained(str(tmp_path / "tokenizer"))
    one, two = (
        prepare(tmp_path, 1, tmp_path / "tokenizer"),
        prepare(tmp_path, 2, tmp_path / "tokenizer"),
    )
    assert one.fingerprint == two.fingerprint
    for name in one.tasks:
        assert one.train[name][:] == two.train[name][:], name
        assert one.heldout[name][:] == two.heldout[name][:], name
    report = one.report
    assert (
        report["documents"]["documents"] == 9 and report["documents"]["one_sentence_documents"] == 1
    )
    for prepared in (one, two):  # each task's build time, counted in the workers too
        for name, entry in prepared.report["tasks"].items():
            assert entry["train_cpu_seconds"] > 0 and entry["heldout_cpu_seconds"] > 0, name
    skipped = report["tasks"]["sentence_distance"]
    total_skips = sum(skipped["train_skipped_documents"].values()) + sum(
        skipped["heldout_skipped_documents"].values()
    )
    assert total_skips == 1  # the one-sentence document, counted
    assert (
        sum(report["tasks"]["sentence_distance"]["labels"].values())
        == report["tasks"]["sentence_distance"]["train_examples"]
    )
    # held-out label counts (the chance levels' source) and the masked-token chance
    heldout = report["tasks"]["sentence_distance"]
    assert sum(heldout["heldout_labels"].values()) == heldout["heldout_examples"]
    share = report["tasks"]["mlm"]["heldout_top_token_share"]
    special = set(tokenizer.all_special_ids)
    tokens = [t for row in one.heldout["mlm"]["input_ids"] for t in row if t not in special]
    assert share == round(max(tokens.count(t) for t in set(tokens)) / len(tokens), 6)
    again = prepare(tmp_path, 1, tmp_path / "tokenizer")  # cached: same files
    assert again.root == one.root
    # The pass files (every task's rows, as large as the output) are not left behind.
    for workers in (1, 2):
        cache = tmp_path / f"cache-{workers}"
        assert sorted(p.name for p in cache.glob("documents/*/documents/*.arrow")) == [
            "data-00000-of-00001.arrow"
        ]
        assert not list(cache.rglob(".pass")) and not list(cache.glob("**/.tmp-*"))


def test_entry_point_tasks_are_found_and_unknown_names_get_a_hint(monkeypatch):
    import pretrain_tasks
    from pretrain_tasks.mlm import MLMTask

    class MyObjective(MLMTask):  # an entry point's name must be its class's name
        name = "my_objective"

    class Point:
        name = "my_objective"

        def load(self):
            return MyObjective

    monkeypatch.setattr(
        pretrain_tasks,
        "entry_points",
        lambda group: [Point()] if group == pretrain_tasks.ENTRY_POINT_GROUP else [],
    )
    assert pretrain_tasks.get_task_class("my_objective") is MyObjective
    with pytest.raises(ValueError, match='did you mean "sentence_distance"'):
        pretrain_tasks.get_task_class("sentence_distanse")


def test_trained_vocabulary_ids_are_canonical():
    import random

    from ernie_cpt.data.tokenization import SPECIAL_TOKENS, canonical_wordpiece

    tokens = SPECIAL_TOKENS + ["paris", "##is", "a", "##s", "city", "london"]
    shuffled = tokens[:]
    random.Random(3).shuffle(shuffled)
    from tokenizers import Tokenizer

    def vocab(order):
        return Tokenizer(canonical_wordpiece({t: i for i, t in enumerate(order)})).get_vocab()

    first, second = vocab(tokens), vocab(shuffled)
    assert first == second
    assert [t for t, _ in sorted(first.items(), key=lambda kv: kv[1])][:5] == SPECIAL_TOKENS


def test_rare_collections_restores_the_collector() -> None:
    import gc

    from ernie_cpt.data.prepare import rare_collections

    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with pytest.raises(RuntimeError), rare_collections(young_every=5000, full_every=500):
        assert gc.get_threshold() == (max(before[0], 5000), before[1], max(before[2], 500))
        assert gc.get_freeze_count() > frozen  # what was alive is out of the collector's walk
        raise RuntimeError("prepare failed")
    assert gc.get_threshold() == before and gc.get_freeze_count() == frozen


def test_rare_collections_still_free_cyclic_garbage() -> None:
    """Young collections are rarer, not gone: cyclic garbage is freed once ``young_every``
    net new objects have been made, without anyone calling ``gc.collect``."""
    import weakref

    from ernie_cpt.data.prepare import rare_collections

    class Node:
        pass

    with rare_collections(young_every=2000):
        node = Node()
        node.self = node  # a cycle: reference counting alone never frees it
        ref = weakref.ref(node)
        del node
        kept = [[] for _ in range(100)]  # fewer new containers than the threshold
        assert ref() is not None  # waiting for a young collection
        kept += [[] for _ in range(5000)]  # past the threshold
        assert ref() is None
