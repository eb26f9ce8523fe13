"""Tokenize once (issue 10 item 1): the shared ``TextEncoder`` gives exactly what the
transformers tokenizer gives, ``encode_pair`` truncates pairs as the tokenizer does, the memo
is bounded, and preparation's one pass over the documents tokenizes each sentence once for
all tasks while building the same examples as one task at a time."""

from __future__ import annotations

import datasets
import pytest

from ernie_cpt.config import TokenizerConfig
from ernie_cpt.data.corpus import load_wikipedia_sample
from ernie_cpt.data.prepare import (
    TASK_COLUMN,
    SentencePool,
    build_split,
    save_task_split,
)
from ernie_cpt.data.segmentation import segment_text
from ernie_cpt.data.tokenization import train_wordpiece
from pretrain_tasks import build_task
from pretrain_tasks.encoding import (
    PlainRoute,
    TextEncoder,
    encoder_for,
    pair_lengths,
    word_start_table,
)
from pretrain_tasks.packing import encode_pair, word_starts_from

AWKWARD = [
    "",
    " ",
    "Naïve café, résumé — Ünïcödé!",
    "tabs\there\nand  double  spaces",
    "CJK 漢字かな交じり文 mixed",
    "emoji 🙂🙂 and ZWJ 👩‍💻 text",
    "control\x00chars\x1f and \u200b zero width",
    "a" * 250 + " very long word",
    "[MASK] and [CLS] literally, plus [UNK]",
    "İstanbul ﬁ ligature ß ǅ",
    "end.\" Quote' (paren) [bracket] {brace}",
]


def sample_sentences(limit: int = 3000) -> list[str]:
    out: list[str] = []
    for record in load_wikipedia_sample():
        for _, sentences in segment_text(record["text"], 2000).paragraphs:
            out += sentences
        if len(out) >= limit:
            break
    return out[:limit]


@pytest.fixture(scope="module")
def cased_tokenizer(tmp_path_factory):
    """A cased WordPiece tokenizer (the fixture one is uncased) trained on the sample."""
    config = TokenizerConfig(vocab_size=600, lowercase=False)
    return train_wordpiece(sample_sentences(800), config, tmp_path_factory.mktemp("cased"))


@pytest.mark.parametrize("which", ["tokenizer", "cased_tokenizer"])
def test_encoder_equals_the_transformers_tokenizer(which, request):
    tokenizer = request.getfixturevalue(which)
    texts = sample_sentences() + AWKWARD
    reference = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    encoded = TextEncoder(tokenizer, capacity=100).encode(texts)
    for i, got in enumerate(encoded):
        assert list(got.ids) == reference["input_ids"][i], texts[i]
        assert [tuple(o) for o in got.offsets] == [tuple(o) for o in reference["offset_mapping"][i]]
        assert list(got.word_starts) == word_starts_from(reference.word_ids(i)), texts[i]


@pytest.mark.parametrize("which", ["tokenizer", "cased_tokenizer"])
def test_encoding_without_offsets_equals_the_transformers_tokenizer(which, request):
    """BERT-style tokenizers take ``encode_batch_fast``: word starts read from the ids."""
    tokenizer = request.getfixturevalue(which)
    texts = sample_sentences() + AWKWARD + ["##ab ### x##y", "hello[UNK]world [SEP]##"]
    reference = tokenizer(texts, add_special_tokens=False)
    encoder = TextEncoder(tokenizer, capacity=100)
    assert encoder.starts_word is not None and not encoder.offsets_wanted
    for i, got in enumerate(encoder.encode(texts, offsets=False)):
        assert got.offsets is None  # the fast path was taken
        assert list(got.ids) == reference["input_ids"][i], texts[i]
        assert list(got.word_starts) == word_starts_from(reference.word_ids(i)), texts[i]


ASCII_TEXTS = [
    "The Quick Brown FOX",
    "[mask] and [MASK] and [Mask] and [cls]",  # added tokens: the normal path
    "ctrl\x01char del\x7fchar",  # control characters: the normal path
    "tab\tin ascii",
    "100% of $5 -- 'quoted' \"double\" `back` ~tilde^ {x}|<y> a_b #1 @me",
    "A" * 150 + " LONG word",
]


def assert_same_as_transformers(tokenizer, texts, encoded, offsets):
    reference = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    for i, got in enumerate(encoded):
        assert list(got.ids) == reference["input_ids"][i], texts[i]
        assert list(got.word_starts) == word_starts_from(reference.word_ids(i)), texts[i]
        if offsets:
            assert [tuple(o) for o in got.offsets] == [
                tuple(o) for o in reference["offset_mapping"][i]
            ], texts[i]


@pytest.mark.parametrize("which", ["tokenizer", "cased_tokenizer"])
@pytest.mark.parametrize("offsets", [True, False])
def test_printable_ascii_skips_the_normalizer_with_the_same_result(which, offsets, request):
    tokenizer = request.getfixturevalue(which)
    texts = ASCII_TEXTS + sample_sentences(600) + AWKWARD
    encoder = TextEncoder(tokenizer)
    assert encoder.plain is not None
    assert_same_as_transformers(tokenizer, texts, encoder.encode(texts, offsets), offsets)
    plain = {t for t in texts if t.isascii() and t.isprintable() and "[" not in t}  # distinct
    assert encoder.plain.texts == len(plain) > 500  # the route was taken, by those only
    assert "[mask] and [MASK] and [Mask] and [cls]" not in plain


def test_texts_that_could_hold_added_tokens_keep_the_normalizer(tokenizer):
    """Added tokens beginning with letters: texts with those letters (either case) take
    the normal path, so normalised and raw matching of the added tokens is unchanged."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.add_tokens([AddedToken("Zeta", normalized=True), AddedToken("OMEGA", normalized=False)])
    other = PreTrainedTokenizerFast(tokenizer_object=backend)
    texts = ["zeta Zeta ZETA", "OMEGA omega Omega", "a zebra at the zoo", "plain text"]
    encoder = TextEncoder(other)
    assert_same_as_transformers(other, texts, encoder.encode(texts), offsets=True)
    assert encoder.plain is not None and encoder.plain.texts == 1  # "plain text" only


def test_other_normalizers_take_no_plain_route(tokenizer):
    from tokenizers import Tokenizer, normalizers

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    assert PlainRoute.of(backend) is not None
    backend.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase()])
    assert PlainRoute.of(backend) is None


def test_the_first_request_for_offsets_switches_to_full_encodings(tokenizer):
    encoder = TextEncoder(tokenizer)
    (fast,) = encoder.encode(["the quick brown fox"], offsets=False)
    (full,) = encoder.encode(["the quick brown fox"])  # remembered without offsets: again
    reference = tokenizer(
        "the quick brown fox", add_special_tokens=False, return_offsets_mapping=True
    )
    assert fast.offsets is None and list(full.offsets) == reference["offset_mapping"]
    assert (fast.ids, fast.word_starts) == (full.ids, full.word_starts)
    assert encoder.encoded == 2 and encoder.offsets_wanted
    assert encoder.encode(["the quick brown fox"], offsets=False) == [full]  # from the memo
    (later,) = encoder.encode(["over the lazy dog"], offsets=False)
    assert later.offsets is not None  # every text full from now on: each encoded once


def test_other_tokenizers_always_take_the_full_path(tokenizer):
    """Under a pre-tokenizer that keeps '#' in words a word may begin with the prefix:
    the ids alone no longer tell word starts, so there is no table and no fast path."""
    from tokenizers import Tokenizer, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    assert word_start_table(backend) is not None
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    assert word_start_table(backend) is None
    other = PreTrainedTokenizerFast(tokenizer_object=backend)
    encoder = TextEncoder(other)
    texts = ["##ab ### x##y", "the quick brown fox"]
    reference = other(texts, add_special_tokens=False)
    for i, got in enumerate(encoder.encode(texts, offsets=False)):
        assert got.offsets is not None and list(got.ids) == reference["input_ids"][i]
        assert list(got.word_starts) == word_starts_from(reference.word_ids(i))


def test_truncation_or_padding_in_the_backend_is_ignored(tokenizer):
    tokenizer.backend_tokenizer.enable_truncation(3)
    tokenizer.backend_tokenizer.enable_padding(length=40)
    try:
        (got,) = TextEncoder(tokenizer).encode(["the quick brown fox jumps over the lazy dog"])
    finally:
        tokenizer.backend_tokenizer.no_truncation()
        tokenizer.backend_tokenizer.no_padding()
    expected = tokenizer("the quick brown fox jumps over the lazy dog", add_special_tokens=False)
    assert list(got.ids) == expected["input_ids"] and len(got.ids) > 3


def reference_pair(tokenizer, first, second, max_length):
    """The former ``encode_pair``: the tokenizer's own pair encoding and truncation."""
    enc = tokenizer(
        first,
        second,
        truncation="longest_first" if second is not None else True,
        max_length=max_length,
        return_token_type_ids=True,
    )
    starts = word_starts_from(enc.word_ids())
    if second:
        seq_ids, word_ids = enc.sequence_ids(), enc.word_ids()
        starts = [
            int(s or (seq_ids[i] == 1 and seq_ids[i - 1] != 1 and word_ids[i] is not None))
            for i, s in enumerate(starts)
        ]
    return {
        "input_ids": enc["input_ids"],
        "token_type_ids": enc["token_type_ids"],
        "word_starts": starts,
    }


def test_encode_pair_equals_the_tokenizers_pair_truncation(tokenizer):
    sentences = sample_sentences(40) + ["", "x", "tiny pair"]
    pairs = [(a, b) for a in sentences[::4] for b in sentences[1::4]] + [(sentences[0], None)]
    checked = 0
    for first, second in pairs:
        for max_length in (3, 4, 5, 8, 13, 32, 128):
            got = encode_pair(tokenizer, first, second, max_length)
            assert got == reference_pair(tokenizer, first, second, max_length), (first, second)
            checked += 1
    assert checked > 500


def test_pair_lengths_rule():
    assert pair_lengths(3, 4, 10) == (3, 4)  # fits: nothing cut
    assert pair_lengths(2, 20, 10) == (2, 8)  # the short one kept whole
    assert pair_lengths(20, 2, 10) == (8, 2)
    assert pair_lengths(9, 8, 9) == (5, 4)  # both cut: the odd token to the longer one
    assert pair_lengths(8, 9, 9) == (4, 5)
    assert pair_lengths(6, 6, 9) == (4, 5)  # equally long: the odd token to the second


def test_the_memo_is_bounded_and_reused(tokenizer):
    encoder = TextEncoder(tokenizer, capacity=4)
    texts = [f"sentence number {i}" for i in range(10)]
    first = encoder.encode(texts)
    assert len(encoder.memo) == 4 and encoder.encoded == 10
    assert encoder.encode(texts[-4:]) == first[-4:] and encoder.encoded == 10  # all remembered
    assert encoder.encode(texts[:2]) == first[:2] and encoder.encoded == 12  # evicted: again
    assert encoder.encode(["a a", "a a", "b"]) == encoder.encode(["a a", "a a", "b"])
    assert encoder.encoded == 14  # a repeated text in one call is encoded once


def test_one_pass_tokenizes_each_sentence_once_and_builds_what_single_tasks_build(
    tokenizer, documents, tmp_path
):
    rows = datasets.Dataset.from_list([d.to_record() for d in documents])
    pool = SentencePool.from_documents(rows, seed=0)
    names = ["mlm", "capitalization", "knowledge_masking", "sentence_reordering"]
    tasks = {n: build_task(n, {}, tokenizer, 48) for n in names}
    encoder_for(tokenizer).memo.clear()
    # as after a process's first document (before it, MLM's texts went without offsets)
    encoder_for(tokenizer).offsets_wanted = True
    before = encoder_for(tokenizer).encoded
    mapped = build_split(tasks, rows, pool, 5, 1, "test-all")
    distinct = {s for d in documents for s in d.sentences()}
    assert encoder_for(tokenizer).encoded - before == len(distinct)  # not 4x: once each
    assert set(mapped.data.column(TASK_COLUMN).to_pylist()) == set(names)
    for name, task in tasks.items():
        together, skips = save_task_split(mapped, task, name, tmp_path / "all" / name)
        alone_mapped = build_split({name: task}, rows, pool, 5, 1, f"test-{name}")
        alone, alone_skips = save_task_split(alone_mapped, task, name, tmp_path / "one" / name)
        assert len(together) > 0 and skips == alone_skips
        assert together.to_dict() == alone.to_dict()
        assert sorted(together.column_names) == sorted(
            ["input_ids", "token_type_ids", "word_starts", *task.example_columns()]
        )


def test_a_task_without_examples_saves_an_empty_loadable_split(tokenizer, documents, tmp_path):
    rows = datasets.Dataset.from_list([documents[-1].to_record()])  # the empty document
    task = build_task("sentence_distance", {}, tokenizer, 48)
    mapped = build_split({"sentence_distance": task}, rows, SentencePool([], []), 0, 1, "empty")
    examples, skips = save_task_split(mapped, task, "sentence_distance", tmp_path / "e")
    assert len(examples) == 0 and sum(skips.values()) == 1
    assert "sentence_distance_label" in examples.column_names


def test_word_starts_from_hand_values() -> None:
    assert word_starts_from([]) == []
    assert word_starts_from([None, 0, 0, 1, None, 2, 2, 3]) == [0, 1, 0, 1, 0, 1, 0, 1]
    # a word id seen again after a special token starts a word again (pair encodings)
    assert word_starts_from([0, 1, None, 0, 0]) == [1, 1, 0, 1, 0]
