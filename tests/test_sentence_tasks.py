"""Exact and property tests of the sentence-level tasks: reordering, discourse relation, IR relevance."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ernie_cpt.data.prepare import SentencePool
from pretrain_tasks.base import SkipDocument, UserRows, assign_rows, row_split, stable_seed
from pretrain_tasks.discourse_relation import (
    MARKER_NAMES,
    MARKER_RELATION,
    MARKERS,
    RELATIONS,
    DiscourseRelationSettings,
    DiscourseRelationTask,
    find_marker,
    marked_pairs,
    read_discovery,
)
from pretrain_tasks.document import Document, Paragraph
from pretrain_tasks.ir_relevance import (
    IRRelevanceSettings,
    IRRelevanceTask,
    PassageIndex,
    read_relevance_data,
    title_and_heading_queries,
    top_positive,
)
from pretrain_tasks.sentence_reordering import (
    SentenceReorderingSettings,
    SentenceReorderingTask,
    assemble,
    fit_lengths,
    label_to_permutation,
    num_classes,
    permutation_to_label,
    sentence_windows,
    split_segments,
)


def pool_of(documents) -> SentencePool:
    sentences = [s for d in documents for s in d.sentences()]
    ids = [d.id for d in documents for _ in d.sentences()]
    return SentencePool(sentences, ids)


def doc(doc_id: str, title, *paragraphs) -> Document:
    """``paragraphs`` as (heading, [sentences])."""
    return Document(doc_id, title, tuple(Paragraph(tuple(s), h) for h, s in paragraphs))


def sentence_ids(tokenizer, sentence: str) -> list[int]:
    return tokenizer(sentence, add_special_tokens=False)["input_ids"]


def split_at_sep(input_ids: list[int], tokenizer) -> list[list[int]]:
    """Segments between [CLS] and the [SEP]s."""
    assert input_ids[0] == tokenizer.cls_token_id and input_ids[-1] == tokenizer.sep_token_id
    segments, current = [], []
    for token in input_ids[1:]:
        if token == tokenizer.sep_token_id:
            segments.append(current)
            current = []
        else:
            current.append(token)
    return segments


# ---------------------------------------------------------------- permutation codec


def test_permutation_codec_exact_values() -> None:
    assert permutation_to_label((0,)) == 0
    assert permutation_to_label((0, 1)) == 1
    assert permutation_to_label((1, 0)) == 2
    assert permutation_to_label((0, 1, 2)) == 3
    assert permutation_to_label((0, 2, 1)) == 4
    assert permutation_to_label((2, 1, 0)) == 8
    assert permutation_to_label((0, 1, 2, 3)) == 9
    assert [num_classes(m) for m in range(1, 6)] == [1, 3, 9, 33, 153]
    assert label_to_permutation(152, 5) == (4, 3, 2, 1, 0)


@pytest.mark.parametrize("max_segments", [1, 2, 3, 4, 5])
def test_permutation_codec_round_trip(max_segments: int) -> None:
    expected = [
        perm
        for n in range(1, max_segments + 1)
        for perm in itertools.permutations(range(n))  # lexicographic order
    ]
    decoded = [label_to_permutation(label, max_segments) for label in range(len(expected))]
    assert decoded == expected
    assert [permutation_to_label(p) for p in decoded] == list(range(num_classes(max_segments)))


def test_permutation_codec_rejects_bad_input() -> None:
    for bad in [(), (1,), (0, 0), (0, 2)]:
        with pytest.raises(ValueError):
            permutation_to_label(bad)
    with pytest.raises(ValueError):
        label_to_permutation(9, 3)
    with pytest.raises(ValueError):
        label_to_permutation(-1, 3)


# ---------------------------------------------------------------- reordering helpers


def test_fit_lengths_proportional_and_never_empty() -> None:
    assert fit_lengths([3, 4], 10) == [3, 4]
    assert fit_lengths([10, 10], 10) == [5, 5]
    assert fit_lengths([1, 100], 10) == [1, 9]
    assert fit_lengths([30, 10, 20], 12) == [6, 2, 4]
    assert fit_lengths([50, 1, 1], 3) == [1, 1, 1]
    with pytest.raises(ValueError):
        fit_lengths([5, 5, 5], 2)


def test_sentence_windows_and_segments() -> None:
    assert sentence_windows([5, 5, 5, 5], 100) == [(0, 4)]
    assert sentence_windows([5, 5, 5, 5], 10) == [(0, 2), (2, 4)]
    assert sentence_windows([50, 50, 5], 10) == [(0, 2)]  # forced pair, lone tail dropped
    assert sentence_windows([5], 10) == []
    rng = random.Random(0)
    for _ in range(50):
        count = rng.randint(1, 6)
        n = rng.randint(1, count)
        segments = split_segments(count, n, rng)
        assert len(segments) == n and segments[0][0] == 0 and segments[-1][1] == count
        assert all(a < b for a, b in segments)
        assert all(prev[1] == nxt[0] for prev, nxt in itertools.pairwise(segments))


def test_assemble_exact() -> None:
    segments = [([10, 11], [1, 0]), ([12], [1]), ([13, 14, 15], [1, 1, 0])]
    out = assemble(segments, (2, 0, 1), cls_id=2, sep_id=3, max_length=64)
    assert out["input_ids"] == [2, 13, 14, 15, 3, 10, 11, 3, 12, 3]
    assert out["token_type_ids"] == [0, 0, 0, 0, 0, 1, 1, 1, 0, 0]
    assert out["word_starts"] == [0, 1, 1, 0, 0, 1, 0, 0, 1, 0]
    short = assemble(segments, (2, 0, 1), cls_id=2, sep_id=3, max_length=8)  # 4 tokens of room
    assert short["input_ids"] == [2, 13, 14, 3, 10, 3, 12, 3]


# ---------------------------------------------------------------- sentence reordering


PARAGRAPH = ("Paris is a city.", "The river flows.", "Many people live there.")


def test_reordering_exact_on_seeded_rng(tokenizer) -> None:
    task = SentenceReorderingTask(SentenceReorderingSettings(), tokenizer, 64)
    document = doc("d", "T", (None, PARAGRAPH))
    (example,) = task.build_examples(document, None, random.Random(6))
    assert example["sentence_reordering_label"] == 7  # (2, 0, 1): shown C, A, B
    assert label_to_permutation(7, 3) == (2, 0, 1)
    a, b, c = (sentence_ids(tokenizer, s) for s in PARAGRAPH)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert example["input_ids"] == [cls, *c, sep, *a, sep, *b, sep]
    types = [0] * (len(c) + 2) + [1] * (len(a) + 1) + [0] * (len(b) + 1)
    assert example["token_type_ids"] == types


@pytest.mark.parametrize("max_segments", [3, 5])
def test_reordering_label_matches_shown_order(tokenizer, max_segments: int) -> None:
    sentences = [
        "Paris is a city.",
        "The river flows.",
        "Many people live there.",
        "The tower was built.",
        "Ada was born in London.",
        "She wrote an algorithm.",
    ]
    original = [t for s in sentences for t in sentence_ids(tokenizer, s)]
    task = SentenceReorderingTask(
        SentenceReorderingSettings(max_segments=max_segments), tokenizer, 128
    )
    document = doc("d", None, (None, sentences))
    segment_counts = Counter()
    for seed in range(200):
        (example,) = task.build_examples(document, None, random.Random(seed))
        label = example["sentence_reordering_label"]
        assert 0 <= label < num_classes(max_segments)
        perm = label_to_permutation(label, max_segments)
        shown = split_at_sep(example["input_ids"], tokenizer)
        assert len(shown) == len(perm) and all(shown)
        restored = [None] * len(perm)
        for position, original_index in enumerate(perm):
            restored[original_index] = shown[position]
        assert [t for segment in restored for t in segment] == original
        segment_counts[len(perm)] += 1
    assert set(segment_counts) == set(range(1, max_segments + 1))
    assert segment_counts[1] < 200 * 0.45  # n uniform: label 0 does not dominate


def test_reordering_skips_and_truncates(tokenizer) -> None:
    task = SentenceReorderingTask(SentenceReorderingSettings(), tokenizer, 16)
    with pytest.raises(SkipDocument, match="no_paragraph_with_two_sentences"):
        task.build_examples(doc("d", "T", (None, ["One sentence only."])), None, random.Random(0))
    long = ["Ada Lovelace was born in London in 1815 and worked on the engine."] * 4
    for seed in range(20):
        for example in task.build_examples(doc("d", None, (None, long)), None, random.Random(seed)):
            assert len(example["input_ids"]) <= 16
            assert all(split_at_sep(example["input_ids"], tokenizer))


def test_reordering_label_counts(tokenizer) -> None:
    task = SentenceReorderingTask(SentenceReorderingSettings(), tokenizer, 64)
    counts = task.label_counts({"sentence_reordering_label": [0, 2, 2, 7]})
    assert counts == {
        "segments=1": 1,
        "segments=2": 2,
        "segments=3": 1,
        "order=0": 1,
        "order=10": 2,
        "order=201": 1,
    }


# ---------------------------------------------------------------- discourse relation


def test_find_marker_exact() -> None:
    assert find_marker("However, the plan failed.") == ("however", "The plan failed.")
    assert MARKER_RELATION["however"] == "contrast"
    assert find_marker("For example, cats purr.") == ("for example", "Cats purr.")
    assert find_marker("FOR INSTANCE, cats purr.") == ("for instance", "Cats purr.")
    assert find_marker("In the meantime, it rained.") == ("in the meantime", "It rained.")
    assert find_marker("That is because the river floods.") == (
        "that is because",
        "The river floods.",
    )
    assert find_marker("That is, the river floods.") == ("that is", "The river floods.")
    assert find_marker("Then he left.") == ("then", "He left.")
    assert find_marker("On  the other hand , it works.") == ("on the other hand", "It works.")
    assert find_marker("Still, it worked.") == ("still", "It worked.")


@pytest.mark.parametrize(
    "sentence",
    [
        "Thenceforth he ruled the city.",
        "Butter is tasty.",
        "So-called experts agreed.",
        "Still life is a genre of painting.",  # "still" needs a comma
        "In addition to bridges, Paris has towers.",  # "in addition" needs a comma
        "Because training is expensive, researchers share models.",  # not a marker
        "However,",
        "However.",
        "The plan failed, however.",
    ],
)
def test_find_marker_rejects(sentence: str) -> None:
    assert find_marker(sentence) is None


def test_marker_table_is_consistent() -> None:
    assert len(MARKERS) == len(set(MARKER_NAMES)) >= 60
    assert set(MARKER_RELATION.values()) == set(RELATIONS)
    assert all(name == " ".join(name.lower().split()) for name in MARKER_NAMES)


def test_marked_pairs_do_not_cross_headings() -> None:
    document = doc(
        "d",
        "T",
        ("A", ["The plan was bold."]),
        ("A", ["However, the plan failed.", "Then it rained."]),
        ("B", ["Therefore, we left."]),
    )
    assert marked_pairs(document) == [
        ("The plan was bold.", "The plan failed.", "however"),
        ("However, the plan failed.", "It rained.", "then"),
    ]


def test_discourse_examples_on_fixture(tokenizer, documents, corpus_view) -> None:
    task = DiscourseRelationTask(DiscourseRelationSettings(), tokenizer, 64)
    found = {}
    for document in documents:
        try:
            examples = task.build_examples(document, corpus_view, random.Random(0))
        except SkipDocument as skip:
            assert skip.reason in ("fewer_than_two_sentences", "no_marked_pair")
            continue
        found[document.id] = [RELATIONS[e["discourse_relation_label"]] for e in examples]
    assert found == {
        "doc-0": ["contrast", "example"],
        "doc-1": ["result", "addition"],
        "doc-2": ["result"],
    }
    (first, _) = task.build_examples(documents[0], corpus_view, random.Random(0))
    expected = tokenizer(
        "She was the daughter of Lord Byron and Anne Isabella Milbanke.",
        "Her parents separated soon after her birth.",
    )["input_ids"]
    assert first["input_ids"] == expected
    by_marker = DiscourseRelationTask(DiscourseRelationSettings(label_by="marker"), tokenizer, 64)
    labels = [
        e["discourse_relation_label"]
        for e in by_marker.build_examples(documents[0], corpus_view, random.Random(0))
    ]
    assert labels == [MARKER_NAMES.index("however"), MARKER_NAMES.index("for example")]
    assert by_marker.num_labels == len(MARKERS)


def test_discourse_settings_validated() -> None:
    with pytest.raises(ValueError, match="label_by"):
        DiscourseRelationSettings(label_by="relation")


def write_discovery(tmp_path: Path) -> tuple[Path, Path]:
    rows = [
        ("The plan was bold.", "It failed.", "however"),
        ("Cats purr.", "Dogs bark.", "similarly"),
        ("It rained.", "We stayed in.", "as_a_result"),
        ("He ran.", "He won.", "then"),
    ]
    tsv = tmp_path / "discovery.tsv"
    tsv.write_text("s1\ts2\tmarker\n" + "".join(f"{a}\t{b}\t{m}\n" for a, b, m in rows))
    jsonl = tmp_path / "discovery.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"s1": a, "s2": b, "marker": m}) + "\n" for a, b, m in rows)
    )
    return tsv, jsonl


def test_discovery_user_data(tmp_path: Path, tokenizer, documents, corpus_view) -> None:
    tsv, jsonl = write_discovery(tmp_path)
    assert read_discovery(tsv) == read_discovery(jsonl)
    assert read_discovery(tsv)[2] == ("It rained.", "We stayed in.", "as a result")
    task = DiscourseRelationTask(DiscourseRelationSettings(user_data=str(tsv)), tokenizer, 64)
    labels = []
    for document in documents:
        try:
            examples = task.build_examples(document, corpus_view, random.Random(0))
        except SkipDocument as skip:
            assert skip.reason == "no_user_rows_for_document"
            continue
        labels += [RELATIONS[e["discourse_relation_label"]] for e in examples]
    assert sorted(labels) == sorted(["contrast", "similarity", "result", "time"])  # each once
    markers = DiscourseRelationTask(
        DiscourseRelationSettings(user_data=str(jsonl), label_by="marker"), tokenizer, 64
    )
    assert markers.label_names == ("as a result", "however", "similarly", "then")


def test_discovery_unknown_marker_is_a_clear_error(tmp_path: Path, tokenizer) -> None:
    path = tmp_path / "d.tsv"
    path.write_text("A.\tB.\tabsolutely\n")
    with pytest.raises(ValueError, match="label_by: marker"):
        DiscourseRelationTask(DiscourseRelationSettings(user_data=str(path)), tokenizer, 64)
    task = DiscourseRelationTask(
        DiscourseRelationSettings(user_data=str(path), label_by="marker"), tokenizer, 64
    )
    assert task.num_labels == 1


def test_assign_rows_each_row_once() -> None:
    ids = [f"doc-{i % 7}" for i in range(40)]
    assigned = assign_rows(range(100), ids, "salt")
    rows = sorted(r for rs in assigned.values() for r in rs)
    assert rows == list(range(100))
    assert set(assigned) <= set(ids)
    assert assign_rows(range(100), list(reversed(ids)), "salt") == assigned
    assert assign_rows(range(5), [], "salt") == {}


# ---------------------------------------------------------------- IR relevance


def source_documents(documents) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for document in documents:
        for sentence in document.sentences():
            out.setdefault(sentence, set()).add(document.id)
    return out


def decode_pair(tokenizer, input_ids: list[int]) -> tuple[str, str]:
    query, passage = split_at_sep(input_ids, tokenizer)
    return tokenizer.decode(query), tokenizer.decode(passage)


def test_ir_queries_from_title_and_headings(documents) -> None:
    assert title_and_heading_queries(documents[0]) == [
        ("Ada Lovelace", "Ada Lovelace was born in London in 1815."),
        ("Early life", "Ada Lovelace was born in London in 1815."),
        ("Work", "Lovelace worked with Charles Babbage on the Analytical Engine."),
    ]
    assert title_and_heading_queries(doc("d", None, (None, ["Text here."]))) == []


def test_ir_stand_in_on_fixture(tokenizer, documents, corpus_view) -> None:
    task = IRRelevanceTask(IRRelevanceSettings(), tokenizer, 64)
    labels = Counter()
    for document in documents:
        try:
            examples = task.build_examples(document, corpus_view, random.Random(0))
        except SkipDocument as skip:
            assert skip.reason == "no_sentences"
            continue
        own = {tokenizer.decode(sentence_ids(tokenizer, s)) for s in document.sentences()}
        for example in examples:
            label = example["ir_relevance_label"]
            _, passage = decode_pair(tokenizer, example["input_ids"])
            assert (passage in own) == (label == 0)
            labels[label] += 1
    # The fixture documents share no content words, so BM25 finds no weak passage there.
    assert labels[0] == labels[2] > 0 and labels[1] == 0


CRAFTED = [
    doc(
        "paris",
        "Paris",
        ("Bridges", ["Paris has many bridges over the Seine river.", "Bridges of Paris are old."]),
    ),
    doc("lyon", "Lyon", (None, ["Lyon has two rivers and many old bridges.", "Food is good."])),
    doc("cats", "Cats", (None, ["Cats sleep most of the day.", "Cats purr."])),
    doc("dogs", "Dogs", (None, ["Dogs bark at night.", "Dogs like long walks."])),
]


def test_bm25_index_finds_similar_passage_of_another_document() -> None:
    pool = pool_of(CRAFTED)
    index = PassageIndex(pool.sentences, pool.document_ids)
    lead = "Paris has many bridges over the Seine river."
    assert index.best_other(f"Paris {lead}", "paris", lead) == (
        "Lyon has two rivers and many old bridges."
    )
    assert index.best_other("cats sleep", "dogs", "") == "Cats sleep most of the day."
    assert index.best_other("cats sleep", "cats", "") is None  # only the own document matches
    assert index.best_other("the of and", "paris", "") is None  # stop words only
    assert PassageIndex([], []).best_other("paris", "x", "") is None
    assert PassageIndex(["The.", "Then."], ["a", "b"]).best_other("the then", "a", "") is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0, 3.5]), max_size=40), st.integers(0, 9))
def test_top_positive_is_the_positive_head_of_a_stable_full_sort(scores, k) -> None:
    array = np.array(scores, dtype=np.float64)
    full = [int(i) for i in np.argsort(-array, kind="stable") if array[i] > 0.0][:k]
    assert top_positive(array, k).tolist() == full  # ties (few distinct values) in index order


def test_ir_weak_never_from_same_document(tokenizer) -> None:
    task = IRRelevanceTask(IRRelevanceSettings(), tokenizer, 64)
    pool = pool_of(CRAFTED)
    sources = {
        tokenizer.decode(sentence_ids(tokenizer, s)): ids
        for s, ids in source_documents(CRAFTED).items()
    }
    labels = Counter()
    for document in CRAFTED:
        for seed in range(5):
            for example in task.build_examples(document, pool, random.Random(seed)):
                label = example["ir_relevance_label"]
                _, passage = decode_pair(tokenizer, example["input_ids"])
                if label == 0:
                    assert sources[passage] == {document.id}
                else:
                    assert document.id not in sources[passage]
                labels[label] += 1
    assert set(labels) == {0, 1, 2}


def test_ir_skips(tokenizer) -> None:
    task = IRRelevanceTask(IRRelevanceSettings(), tokenizer, 64)
    alone = doc("a", "Alone", (None, ["Cats purr."]))
    with pytest.raises(SkipDocument, match="no_other_document"):
        task.build_examples(alone, pool_of([alone]), random.Random(0))
    untitled = doc("u", None, (None, ["Cats purr."]))
    with pytest.raises(SkipDocument, match="no_title_or_heading"):
        task.build_examples(untitled, pool_of(CRAFTED), random.Random(0))
    with pytest.raises(SkipDocument, match="no_sentences"):
        task.build_examples(doc("e", "Empty"), pool_of(CRAFTED), random.Random(0))


def test_ir_user_data(tmp_path: Path, tokenizer, documents, corpus_view) -> None:
    rows = [("paris bridges", "Bridges of Paris", 0), ("cat food", "Dogs bark", 2)]
    jsonl = tmp_path / "ir.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"query": q, "title": t, "label": y}) + "\n" for q, t, y in rows)
    )
    tsv = tmp_path / "ir.tsv"
    tsv.write_text(
        "query\ttitle\tlabel\nparis bridges\tBridges of Paris\tstrong\ncat food\tDogs bark\t2\n"
    )
    assert read_relevance_data(jsonl) == read_relevance_data(tsv) == rows
    task = IRRelevanceTask(IRRelevanceSettings(user_data=str(tsv)), tokenizer, 64)
    found = []
    for document in documents:
        try:
            examples = task.build_examples(document, corpus_view, random.Random(0))
        except SkipDocument as skip:
            assert skip.reason == "no_user_rows_for_document"
            continue
        found += [
            (*decode_pair(tokenizer, e["input_ids"]), e["ir_relevance_label"]) for e in examples
        ]
    assert sorted(found) == [("cat food", "dogs bark", 2), ("paris bridges", "bridges of paris", 0)]
    bad = tmp_path / "bad.tsv"
    bad.write_text("q\tt\tclicked\n")
    with pytest.raises(ValueError, match="bad.tsv:1: label"):
        read_relevance_data(bad)


def test_ir_task_pickles_without_its_index(tokenizer, documents, corpus_view) -> None:
    import pickle

    task = IRRelevanceTask(IRRelevanceSettings(), tokenizer, 64)
    task.build_examples(documents[0], corpus_view, random.Random(0))
    assert task._index is not None
    assert pickle.loads(pickle.dumps(task))._index is None


# ---------------------------------------------------------------- properties of every builder

WORDS = ["paris", "river", "cats", "however,", "then", "for", "example,", "the", "city", "ada"]
words = st.lists(st.sampled_from(WORDS), min_size=0, max_size=12).map(" ".join)
sentences = words.map(lambda s: s[:1].upper() + s[1:] + ".")
titles = st.one_of(st.none(), words)
paragraphs = st.lists(
    st.tuples(titles, st.lists(sentences, min_size=0, max_size=4)), min_size=0, max_size=3
)
documents_strategy = st.lists(st.tuples(titles, paragraphs), min_size=1, max_size=4).map(
    lambda docs: [
        Document(f"doc-{i}", title, tuple(Paragraph(tuple(s[:8]), h) for h, s in ps))
        for i, (title, ps) in enumerate(docs)
    ]
)

BUILDERS = {
    "sentence_reordering": lambda tok, n: SentenceReorderingTask(
        SentenceReorderingSettings(), tok, n
    ),
    "sentence_reordering_m5": lambda tok, n: SentenceReorderingTask(
        SentenceReorderingSettings(max_segments=5), tok, n
    ),
    "discourse_relation": lambda tok, n: DiscourseRelationTask(DiscourseRelationSettings(), tok, n),
    "discourse_relation_marker": lambda tok, n: DiscourseRelationTask(
        DiscourseRelationSettings(label_by="marker"), tok, n
    ),
    "ir_relevance": lambda tok, n: IRRelevanceTask(IRRelevanceSettings(), tok, n),
}


@pytest.mark.parametrize("builder", sorted(BUILDERS))
@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    docs=documents_strategy, max_seq_length=st.sampled_from([5, 12, 64]), seed=st.integers(0, 99)
)
def test_builder_properties(tokenizer, builder: str, docs, max_seq_length: int, seed: int) -> None:
    task = BUILDERS[builder](tokenizer, max_seq_length)
    pool = pool_of(docs)
    label_column = next(iter(task.example_columns()))
    for document in docs:
        outputs = []
        for _ in range(2):
            rng = random.Random(stable_seed(seed, task.name, document.id))
            try:
                outputs.append(task.build_examples(document, pool, rng))
            except SkipDocument as skip:
                outputs.append(skip.reason)
        assert outputs[0] == outputs[1]  # same seed, same output
        if isinstance(outputs[0], str):
            continue
        for example in outputs[0]:
            length = len(example["input_ids"])
            assert length <= max_seq_length
            assert len(example["token_type_ids"]) == len(example["word_starts"]) == length
            assert set(example["token_type_ids"]) <= {0, 1}
            assert 0 <= example[label_column] < task.num_labels


def test_user_rows_split_between_train_and_heldout_without_overlap() -> None:
    class View:
        def __init__(self, split: str, ids: list[str]) -> None:
            self.split, self.heldout_fraction, self.document_ids = split, 0.2, ids

    rows = UserRows(200, "salt")
    train_view, heldout_view = View("train", ["a", "b", "c"]), View("heldout", ["d"])
    train = [r for d in "abc" for r in rows.for_document(train_view, d)]
    heldout = rows.for_document(heldout_view, "d")
    assert sorted(train + heldout) == list(range(200))  # every row exactly once
    assert not set(train) & set(heldout)
    assert 20 <= len(heldout) <= 60  # about 20 %
    assert all(row_split("salt", r, 0.2) == "heldout" for r in heldout)


def test_read_user_rows_jsonl_tsv_header_and_errors(tmp_path) -> None:
    from pretrain_tasks.base import read_user_rows

    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"b": 2, "a": "x"}\n\n{"a": "y"}\n')
    with pytest.raises(ValueError, match="rows.jsonl:3: missing keys \\['b'\\]"):
        read_user_rows(jsonl, ("a", "b"))
    tsv = tmp_path / "rows.tsv"
    tsv.write_text("B\tA\n2\tx\n\n3\ty\n")
    assert read_user_rows(tsv, ("a", "b")) == [(f"{tsv}:2", ("x", "2")), (f"{tsv}:4", ("y", "3"))]
    short = tmp_path / "short.tsv"
    short.write_text("only-one-column\n")
    with pytest.raises(ValueError, match="short.tsv:1: expected a, b columns"):
        read_user_rows(short, ("a", "b"))


# ---------------------------------------------------------------- sentence distance


def sentence_distance_pairs(tokenizer, documents, pool, seeds: range) -> list[tuple]:
    """(anchor doc, anchor index, second doc, second index, label) of every built example.

    The pair is read back from the token ids: each fixture sentence has distinct ids, and
    ``pool`` holds only fixture sentences.
    """
    from pretrain_tasks.sentence_distance import SentenceDistanceSettings, SentenceDistanceTask

    where = {}
    for document in documents:
        for index, sentence in enumerate(document.sentences()):
            key = tuple(sentence_ids(tokenizer, sentence))
            assert key not in where, "fixture sentences must tokenize distinctly"
            where[key] = (document.id, index)
    task = SentenceDistanceTask(SentenceDistanceSettings(), tokenizer, 128)
    out = []
    for seed in seeds:
        for document in documents:
            if len(document.sentences()) < 2:
                continue
            for example in task.build_examples(document, pool, random.Random(seed)):
                first, second = split_at_sep(example["input_ids"], tokenizer)
                out.append(
                    (
                        *where[tuple(first)],
                        *where[tuple(second)],
                        example["sentence_distance_label"],
                    )
                )
    return out


def test_sentence_distance_labels_mean_adjacent_same_document_other_document(
    tokenizer, documents
) -> None:
    pool = pool_of(documents)
    pairs = sentence_distance_pairs(tokenizer, documents, pool, range(6))
    assert Counter(label for *_, label in pairs).keys() == {0, 1, 2}
    for anchor_doc, i, second_doc, j, label in pairs:
        if label == 0:  # the next sentence of the same document
            assert (second_doc, j) == (anchor_doc, i + 1)
        elif label == 1:  # the same document, neither the anchor nor next to it
            assert second_doc == anchor_doc and abs(j - i) > 1
        else:  # a sentence of another document
            assert label == 2 and second_doc != anchor_doc


def test_sentence_distance_other_document_never_from_the_anchor_document(tokenizer) -> None:
    # The pool is 200 sentences of the anchor's document and one of another document: random
    # draws nearly always hit the anchor's document, so only the exclusion keeps label 2 right.
    anchor = doc(
        "anchor",
        None,
        (None, [f"Sentence {w} of the anchor." for w in ("one", "two", "three", "four")]),
    )
    other = "Machine learning is a field of artificial intelligence."
    pool = SentencePool([*anchor.sentences()] * 50 + [other], ["anchor"] * 200 + ["other"])
    from pretrain_tasks.sentence_distance import draw_pairs

    seconds = [
        (second, label)
        for seed in range(40)
        for _, second, label in draw_pairs(
            anchor.sentences(), "anchor", pool, random.Random(seed), 8
        )
    ]
    assert {s for s, label in seconds if label == 2} == {other}
    assert Counter(label for _, label in seconds).keys() == {0, 1, 2}
    # no other document at all: label 2 is never drawn
    alone = SentencePool(list(anchor.sentences()), ["anchor"] * 4)
    labels = {
        label
        for seed in range(20)
        for *_, label in draw_pairs(anchor.sentences(), "anchor", alone, random.Random(seed), 8)
    }
    assert labels == {0, 1}
