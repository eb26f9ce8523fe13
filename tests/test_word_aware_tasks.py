"""Word-aware tasks: knowledge masking, capitalization and token-document relation."""

from __future__ import annotations

import random
import sys
import types

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ernie_cpt.config import TokenizerConfig
from pretrain_tasks.base import IGNORE_INDEX, SkipDocument, binary_token_metrics
from pretrain_tasks.capitalization import (
    CapitalizationSettings,
    CapitalizationTask,
    capital_label,
)
from pretrain_tasks.document import Document, Paragraph
from pretrain_tasks.knowledge_masking import (
    ENTITY_COUNT,
    ENTITY_UNITS,
    PHRASE_COUNT,
    PHRASE_UNITS,
    GazetteerMatcher,
    KnowledgeMaskingSettings,
    KnowledgeMaskingTask,
    choose_units,
    find_capitalised_entities,
    find_phrase_spans,
    mine_collocations,
    pack_sentences_with_offsets,
    select_non_overlapping,
    units_from_spans,
)
from pretrain_tasks.masking import unit_mask
from pretrain_tasks.mlm import MLMSettings, MLMTask
from pretrain_tasks.packing import pack_sentences
from pretrain_tasks.sentence_distance import SentenceDistanceSettings, SentenceDistanceTask
from pretrain_tasks.token_document_relation import (
    TokenDocumentRelationSettings,
    TokenDocumentRelationTask,
    normalise_word,
    relation_labels,
)

MAX_LEN = 32
SHARED = ("input_ids", "token_type_ids", "word_starts")


def columns_of(examples):
    return {key: [e[key] for e in examples] for key in examples[0]}


def crafted(*paragraphs):
    return Document("crafted", None, tuple(Paragraph(tuple(p)) for p in paragraphs))


def spans_text(text, spans):
    return [text[a:b] for a, b in spans]


def knowledge_masking(tokenizer, **options):
    return KnowledgeMaskingTask(KnowledgeMaskingSettings(**options), tokenizer, MAX_LEN)


def all_examples(task, documents, corpus_view, seed=0):
    out = []
    for document in documents:
        try:
            out += task.build_examples(document, corpus_view, random.Random(seed))
        except SkipDocument:
            pass
    return out


def word_labels(example, key):
    """Labels at word starts, and whether every other position is IGNORE_INDEX."""
    pairs = list(zip(example["word_starts"], example[key], strict=True))
    return [y for s, y in pairs if s], all(y == IGNORE_INDEX for s, y in pairs if not s)


def words_of(tokenizer, example):
    """The tokens of each word of an example (continuations merged)."""
    tokens = tokenizer.convert_ids_to_tokens(example["input_ids"])
    words = []
    for token, start in zip(tokens, example["word_starts"], strict=True):
        if start:
            words.append(token)
        elif words and token.startswith("##"):
            words[-1] += token[2:]
    return words


# ---------------------------------------------------------------- knowledge masking: span finders


def test_capitalised_entities_found_but_not_sentence_initial_words():
    text = "Lovelace worked with Charles Babbage on the Analytical Engine."
    assert spans_text(text, find_capitalised_entities(text)) == [
        "Charles Babbage",
        "Analytical Engine",
    ]
    text = "The New York Times reported on deep learning in 2012."
    assert spans_text(text, find_capitalised_entities(text)) == ["New York Times"]
    text = "Ada Lovelace met the Bank of England in London."
    assert spans_text(text, find_capitalised_entities(text)) == ["Ada Lovelace", "Bank of England"]
    assert find_capitalised_entities("Paris is the capital of France.") == []
    assert find_capitalised_entities("The Seine flows, Paris grows.") == []
    assert find_capitalised_entities("") == []


def test_pmi_miner_finds_repeated_collocations_only():
    sentences = [
        "The analytical engine was a machine.",
        "Babbage designed the analytical engine in London.",
        "The engine used punched cards.",
        "An analytical mind helps the engine.",
        "The machine was big, and the machine was loud.",
    ]
    found = mine_collocations(sentences)
    assert ("analytical", "engine") in found
    assert ("punched", "cards") not in found  # seen once
    assert all(g[0] not in ("the", "a", "was") and g[-1] != "the" for g in found)
    assert mine_collocations(sentences, min_count=3) == []
    assert mine_collocations([]) == []


def test_pmi_miner_never_joins_words_across_punctuation_or_sentences():
    """N-grams stay inside one run of words: across a comma or a sentence end (even with
    phrase-shaped words on both sides) nothing is counted."""
    sentences = ["Copper wire, glass fibre.", "Copper wire", "glass fibre"] * 3
    found = mine_collocations(sentences)
    assert found == [("copper", "wire"), ("glass", "fibre")]
    assert mine_collocations(["Copper wire glass fibre."] * 3) != []  # one run: joined


def test_phrase_spans_and_overlaps():
    text = "The Analytical Engine, engine analytical, analytical engine."
    spans = find_phrase_spans(text, {("analytical", "engine")})
    assert spans_text(text, spans) == ["Analytical Engine", "analytical engine"]
    assert select_non_overlapping([(0, 5), (2, 9), (9, 12), (10, 11)]) == [(2, 9), (9, 12)]


def test_gazetteer_matching(tmp_path):
    path = tmp_path / "entities.txt"
    path.write_text("New York Times\n# a comment\n\nSeine\nAT&T\n", encoding="utf-8")
    from pretrain_tasks.knowledge_masking import read_gazetteer

    entries = read_gazetteer(path)
    assert entries == ["New York Times", "Seine", "AT&T"]
    matcher = GazetteerMatcher(entries, case_sensitive=True)
    text = "The New  York Times wrote on AT&T and the Seine, not Seines or new york times."
    assert spans_text(text, matcher.find(text)) == ["New  York Times", "AT&T", "Seine"]
    folded = GazetteerMatcher(entries, case_sensitive=False)
    assert "new york times" in spans_text(text, folded.find(text))
    import pickle

    assert pickle.loads(pickle.dumps(matcher)).find(text) == matcher.find(text)


def test_task_uses_gazetteers(tokenizer, tmp_path):
    entities = tmp_path / "entities.txt"
    entities.write_text("Seine\n", encoding="utf-8")
    phrases = tmp_path / "phrases.txt"
    phrases.write_text("capital and largest city\n", encoding="utf-8")
    task = knowledge_masking(
        tokenizer, entity_gazetteer=str(entities), phrase_gazetteer=str(phrases)
    )
    sentences = ["Paris is the capital and largest city of France.", "The Seine river flows."]
    assert [
        spans_text(s, p) for s, p in zip(sentences, task.phrase_spans(sentences), strict=True)
    ] == [
        ["capital and largest city"],
        [],
    ]
    assert [
        spans_text(s, e) for s, e in zip(sentences, task.entity_spans(sentences), strict=True)
    ] == [
        [],
        ["Seine"],
    ]
    with pytest.raises(FileNotFoundError):
        knowledge_masking(tokenizer, entity_gazetteer=str(tmp_path / "missing.txt"))


def test_spacy_pipeline_is_optional_and_lazy(tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # as if not installed
    with pytest.raises(ValueError, match="spaCy"):
        knowledge_masking(tokenizer, spacy_model="en_core_web_sm")

    class FakeDoc:
        def __init__(self, text):
            start = text.find("Paris")
            span = types.SimpleNamespace(start_char=start, end_char=start + 5)
            self.ents = [span] if start >= 0 else []

    loaded = []
    fake = types.ModuleType("spacy")
    fake.load = lambda name: (
        loaded.append(name) or types.SimpleNamespace(pipe=lambda texts: [FakeDoc(t) for t in texts])
    )
    monkeypatch.setitem(sys.modules, "spacy", fake)
    task = knowledge_masking(tokenizer, spacy_model="my_pipeline")
    assert loaded == []  # loaded on first use only
    sentences = ["We met in Paris.", "Nothing here."]
    assert [
        spans_text(s, e) for s, e in zip(sentences, task.entity_spans(sentences), strict=True)
    ] == [
        ["Paris"],
        [],
    ]
    assert loaded == ["my_pipeline"]


def test_settings_validation(tokenizer):
    with pytest.raises(ValueError, match="unknown levels"):
        KnowledgeMaskingSettings(level_weights={"sentence": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        KnowledgeMaskingSettings(level_weights={"basic": 0.0})
    with pytest.raises(ValueError):
        KnowledgeMaskingSettings(mask_probability=1.5)
    with pytest.raises(ValueError, match="segment_by"):
        TokenDocumentRelationSettings(segment_by="sentence")


# ---------------------------------------------------------------- knowledge masking: units


def test_packing_with_offsets_matches_pack_sentences(tokenizer, documents):
    for document in documents[:3]:
        for max_len in (8, 16, MAX_LEN, 128):
            packed = pack_sentences_with_offsets(tokenizer, document.sentences(), max_len)
            plain = pack_sentences(tokenizer, document.sentences(), max_len)
            assert [p.shared_columns() for p in packed] == plain


def test_entity_units_cover_whole_names(tokenizer):
    sentence = "Lovelace worked with Charles Babbage on the Analytical Engine."
    (segment,) = pack_sentences_with_offsets(tokenizer, [sentence], MAX_LEN)
    units, count = units_from_spans(segment, [find_capitalised_entities(sentence)])
    assert count == 2 and units[0] == units[-1] == 0

    def units_in(text):
        lo = sentence.index(text)
        inside = [
            unit
            for unit, source, (a, b) in zip(
                units, segment.sentence_index, segment.offsets, strict=True
            )
            if source >= 0 and lo <= a and b <= lo + len(text)
        ]
        return inside

    for name in ("Charles Babbage", "Analytical Engine"):
        inside = units_in(name)
        assert len(inside) >= 2 and len(set(inside)) == 1  # one unit, several tokens
        assert units.count(inside[0]) == len(inside)  # and nothing else in it
    assert len(set(units_in("Lovelace worked with"))) == 3  # other words: one unit each
    real = [u for u in units if u]
    assert real == sorted(real) and set(real) == set(range(1, max(real) + 1))


def test_units_are_whole_words(tokenizer, documents, corpus_view):
    task = knowledge_masking(tokenizer)
    examples = all_examples(task, documents, corpus_view)
    entities = sum(e[ENTITY_COUNT] for e in examples)
    assert entities >= 6  # Ada Lovelace, Lord Byron, Charles Babbage, New York Times, ...
    for example in examples:
        special = [t in tokenizer.all_special_ids for t in example["input_ids"]]
        for column in (PHRASE_UNITS, ENTITY_UNITS):
            units = example[column]
            assert len(units) == len(example["input_ids"])
            for i, unit in enumerate(units):
                assert (unit == 0) == special[i]
                if not example["word_starts"][i] and not special[i]:
                    assert unit == units[i - 1]  # sub-tokens share their word's unit
            real = [u for u in units if u]
            assert real == sorted(real)  # units are contiguous runs
    assert task.label_counts(columns_of(examples)) == {
        "basic": sum(sum(e["word_starts"]) for e in examples),
        "phrase": sum(e[PHRASE_COUNT] for e in examples),
        "entity": entities,
        "tokens": sum(len(e["input_ids"]) for e in examples),
    }


def test_knowledge_masking_skips_empty_document(tokenizer, corpus_view):
    task = knowledge_masking(tokenizer)
    with pytest.raises(SkipDocument) as skip:
        task.build_examples(crafted(), corpus_view, random.Random(0))
    assert skip.value.reason == "no_sentences"


# ---------------------------------------------------------------- knowledge masking: masking


def test_unit_mask_forced_probabilities():
    input_ids = torch.tensor([[2, 10, 11, 12, 13, 3, 0]])
    units = torch.tensor([[0, 1, 1, 2, 3, 0, 0]])
    generator = torch.Generator().manual_seed(0)
    common = dict(mask_token_id=4, vocab_size=50, generator=generator)
    masked, labels = unit_mask(input_ids, units, probability=1.0, replace_probability=1.0, **common)
    assert masked.tolist() == [[2, 4, 4, 4, 4, 3, 0]]
    assert labels.tolist() == [[-100, 10, 11, 12, 13, -100, -100]]
    masked, labels = unit_mask(input_ids, units, probability=0.0, **common)
    assert masked.equal(input_ids) and (labels == IGNORE_INDEX).all()
    masked, labels = unit_mask(
        input_ids, units, probability=1.0, replace_probability=0.0, random_probability=0.0, **common
    )  # the "kept" action: labelled, unchanged
    assert masked.equal(input_ids)
    assert labels.tolist() == [[-100, 10, 11, 12, 13, -100, -100]]


def test_unit_mask_random_token_branch_exact():
    # replace 0, random 1: every chosen unit takes a random id; with a one-word vocabulary
    # that id is 0, so the random branch is checked exactly
    input_ids = torch.tensor([[2, 10, 11, 12, 13, 3, 0]])
    units = torch.tensor([[0, 1, 1, 2, 3, 0, 0]])
    generator = torch.Generator().manual_seed(0)
    common = dict(mask_token_id=4, generator=generator, probability=1.0)
    masked, labels = unit_mask(
        input_ids, units, vocab_size=1, replace_probability=0.0, random_probability=1.0, **common
    )
    assert masked.tolist() == [[2, 0, 0, 0, 0, 3, 0]]
    assert labels.tolist() == [[-100, 10, 11, 12, 13, -100, -100]]
    # 50% mask, 50% random, 0% kept: every chosen token is [MASK] (4) or the random id 0
    rows = input_ids.repeat(64, 1)
    masked, labels = unit_mask(
        rows,
        units.repeat(64, 1),
        vocab_size=1,
        replace_probability=0.5,
        random_probability=0.5,
        **common,
    )
    chosen = masked[:, 1:5]
    assert set(chosen.unique().tolist()) == {0, 4}
    assert masked[:, 0].eq(2).all() and masked[:, 5].eq(3).all()
    # a unit's tokens share the action: tokens 10 and 11 (unit 1) are both 0 or both 4
    assert chosen[:, 0].equal(chosen[:, 1])


def test_mlm_task_random_token_branch(tokenizer, documents, corpus_view):
    task = MLMTask(
        MLMSettings(mask_probability=1.0, replace_probability=0.0, random_probability=1.0),
        tokenizer,
        MAX_LEN,
    )
    columns = columns_of(all_examples(task, documents, corpus_view))
    batch = task.collate(columns, torch.Generator().manual_seed(0))
    original = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(r) for r in columns["input_ids"]], batch_first=True, padding_value=0
    )
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    real = batch["attention_mask"].bool() & ~special
    ids = batch["input_ids"]
    # no [MASK] but by chance (1 id in ~300), against 100% with replace_probability 1
    assert (ids[real] == tokenizer.mask_token_id).float().mean().item() < 0.02
    assert batch["mlm_labels"][real].equal(original[real])  # every real token is labelled
    assert (batch["mlm_labels"][~real] == IGNORE_INDEX).all()
    assert ids[~real].equal(original[~real])  # specials and padding untouched
    assert int(ids.max()) < len(tokenizer) and int(ids.min()) >= 0
    # uniform over ~300 ids: about 1 token in 300 keeps its own id by chance
    changed = (ids[real] != original[real]).float().mean().item()
    assert changed > 0.95, changed
    kept = MLMTask(
        MLMSettings(mask_probability=1.0, replace_probability=0.0, random_probability=0.0),
        tokenizer,
        MAX_LEN,
    ).collate(columns, torch.Generator().manual_seed(0))
    assert kept["input_ids"].equal(original)  # the "kept" 10%: labelled, unchanged
    assert kept["mlm_labels"][real].equal(original[real])


def test_choose_units_by_level():
    words = torch.tensor([[1, 2, 3], [1, 2, 3], [1, 2, 3]])
    phrases = torch.tensor([[1, 1, 2], [1, 1, 2], [1, 1, 2]])
    entities = torch.tensor([[1, 2, 2], [1, 2, 2], [1, 2, 2]])
    chosen = choose_units(torch.tensor([0, 1, 2]), words, phrases, entities)
    assert chosen.tolist() == [[1, 2, 3], [1, 1, 2], [1, 2, 2]]


def test_collate_masks_every_unit_token_when_forced(tokenizer, documents, corpus_view):
    task = knowledge_masking(tokenizer, mask_probability=1.0, replace_probability=1.0)
    columns = columns_of(all_examples(task, documents, corpus_view))
    batch = task.collate(columns, torch.Generator().manual_seed(0))
    original = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(r) for r in columns["input_ids"]], batch_first=True, padding_value=0
    )
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    real = batch["attention_mask"].bool() & ~special
    assert (batch["input_ids"][real] == tokenizer.mask_token_id).all()
    assert batch["input_ids"][~real].equal(original[~real])
    assert batch["knowledge_masking_labels"][real].equal(original[real])
    assert (batch["knowledge_masking_labels"][~real] == IGNORE_INDEX).all()
    none = knowledge_masking(tokenizer, mask_probability=0.0)
    batch = none.collate(columns, torch.Generator().manual_seed(0))
    assert batch["input_ids"].equal(original)
    assert (batch["knowledge_masking_labels"] == IGNORE_INDEX).all()


def test_entity_level_masks_names_as_one_unit(tokenizer, documents, corpus_view):
    # Half the units masked, half kept: every unit must be all-masked or all-kept.
    task = knowledge_masking(
        tokenizer,
        mask_probability=1.0,
        replace_probability=0.5,
        random_probability=0.0,
        level_weights={"entity": 1.0},
    )
    columns = columns_of(all_examples(task, documents, corpus_view))
    for seed in range(3):
        batch = task.collate(columns, torch.Generator().manual_seed(seed))
        masked = batch["input_ids"] == tokenizer.mask_token_id
        for row, units in enumerate(columns[ENTITY_UNITS]):
            for unit in set(units) - {0}:
                positions = [i for i, u in enumerate(units) if u == unit]
                assert len({bool(masked[row, i]) for i in positions}) == 1


def test_collate_is_deterministic_per_generator(tokenizer, documents, corpus_view):
    task = knowledge_masking(tokenizer)
    columns = columns_of(all_examples(task, documents, corpus_view))
    first = task.collate(columns, torch.Generator().manual_seed(3))
    second = task.collate(columns, torch.Generator().manual_seed(3))
    assert all(first[k].equal(second[k]) for k in first)
    labelled = (first["knowledge_masking_labels"] != IGNORE_INDEX).float().mean()
    assert 0.0 < labelled < 0.5


def sentence_distance_batch(tokenizer, documents, corpus_view):
    task = SentenceDistanceTask(SentenceDistanceSettings(), tokenizer, MAX_LEN)
    columns = columns_of(all_examples(task, documents, corpus_view))
    return task.collate(columns, torch.Generator().manual_seed(0)), columns


def test_attach_to_sentence_batch_uses_words(tokenizer, documents, corpus_view):
    batch, columns = sentence_distance_batch(tokenizer, documents, corpus_view)
    original = batch["input_ids"].clone()
    task = knowledge_masking(tokenizer, mask_probability=1.0, replace_probability=1.0)
    assert task.attach(batch, columns, torch.Generator().manual_seed(0))
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    real = batch["attention_mask"].bool() & ~special
    assert batch["knowledge_masking_labels"][real].equal(original[real])
    assert (batch["knowledge_masking_labels"][~real] == IGNORE_INDEX).all()
    assert "sentence_distance_label" in batch


def test_second_masking_task_leaves_mlm_positions_alone(tokenizer, documents, corpus_view):
    batch, columns = sentence_distance_batch(tokenizer, documents, corpus_view)
    original = batch["input_ids"].clone()
    mlm = MLMTask(MLMSettings(mask_probability=0.5), tokenizer, MAX_LEN)
    mlm.attach(batch, columns, torch.Generator().manual_seed(0))
    after_mlm = batch["input_ids"].clone()
    by_mlm = batch["mlm_labels"] != IGNORE_INDEX
    assert by_mlm.any()
    task = knowledge_masking(tokenizer, mask_probability=1.0, replace_probability=1.0)
    task.attach(batch, columns, torch.Generator().manual_seed(1))
    labels = batch["knowledge_masking_labels"]
    assert (labels[by_mlm] == IGNORE_INDEX).all()
    assert batch["input_ids"][by_mlm].equal(after_mlm[by_mlm])  # mlm's corruption untouched
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    rest = batch["attention_mask"].bool() & ~special & ~by_mlm
    assert labels[rest].equal(original[rest])  # labels are original ids, never [MASK]


# ---------------------------------------------------------------- capitalization


def test_capitalization_labels_exact(tokenizer, corpus_view):
    task = CapitalizationTask(CapitalizationSettings(), tokenizer, MAX_LEN)
    document = crafted(["Ada met Charles in PARIS, 1815.", "the city."])
    (example,) = task.build_examples(document, corpus_view, random.Random(0))
    labels, rest_ignored = word_labels(example, "capitalization_labels")
    assert words_of(tokenizer, example) == [
        "ada", "met", "charles", "in", "paris", ",", "1815", ".", "the", "city", ".",
    ]  # fmt: skip
    assert labels == [1, 0, 1, 0, 1, -100, -100, -100, 0, 0, -100]
    assert rest_ignored
    initial = CapitalizationTask(
        CapitalizationSettings(ignore_sentence_initial=True), tokenizer, MAX_LEN
    )
    (example,) = initial.build_examples(document, corpus_view, random.Random(0))
    assert word_labels(example, "capitalization_labels")[0] == [
        -100, 0, 1, 0, 1, -100, -100, -100, -100, 0, -100,
    ]  # fmt: skip
    assert capital_label("Élan") == 1 and capital_label("élan") == 0 and capital_label("42") == -100


def test_capitalization_refuses_cased_tokenizer(tmp_path):
    from conftest import FIXTURE_TEXT

    from ernie_cpt.data.tokenization import load_tokenizer, train_wordpiece

    texts = [s for _, _, sentences in FIXTURE_TEXT for s in sentences] * 3
    config = TokenizerConfig(vocab_size=300, min_frequency=1, lowercase=False)
    train_wordpiece(texts, config, tmp_path)
    cased = load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="uncased"):
        CapitalizationTask(CapitalizationSettings(), cased, MAX_LEN)


def test_binary_metrics():
    stats = {"correct": 3, "count": 4, "loss_sum": 2.0}
    stats |= {"true_positive": 1, "predicted_positive": 2, "actual_positive": 1}
    metrics = binary_token_metrics(stats)
    assert metrics["accuracy"] == 0.75 and metrics["loss"] == 0.5
    assert metrics["precision"] == 0.5 and metrics["recall"] == 1.0
    assert metrics["f1"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------- token-document relation


def test_normalise_word():
    assert normalise_word("Naïve!") == "naive"
    assert normalise_word("PARIS") == "paris"
    assert normalise_word("...") == ""


def test_relation_labels_pure():
    labels = relation_labels([["babbage", "the", "engine", "1815"], ["engine", "the", "cards"]])
    assert labels == [[0, -100, 1, -100], [1, -100, 0]]
    with_stop = relation_labels([["the", "engine"], ["the"]], ignore_stop_words=False)
    assert with_stop == [[1, 0], [1]]


def test_token_document_relation_labels_exact(tokenizer, corpus_view):
    document = crafted(
        ["Babbage designed an engine."], ["The engine used cards, said Babbage in 1815."]
    )
    task = TokenDocumentRelationTask(TokenDocumentRelationSettings(), tokenizer, MAX_LEN)
    first, second = task.build_examples(document, corpus_view, random.Random(0))
    assert words_of(tokenizer, first) == ["babbage", "designed", "an", "engine", "."]
    assert word_labels(first, "token_document_relation_labels") == ([1, 0, -100, 1, -100], True)
    assert words_of(tokenizer, second)[:7] == [
        "the",
        "engine",
        "used",
        "cards",
        ",",
        "said",
        "babbage",
    ]
    labels, rest_ignored = word_labels(second, "token_document_relation_labels")
    assert labels == [-100, 1, 0, 0, -100, 0, 1, -100, -100, -100] and rest_ignored
    keep = TokenDocumentRelationTask(
        TokenDocumentRelationSettings(ignore_stop_words=False), tokenizer, MAX_LEN
    )
    first, second = keep.build_examples(document, corpus_view, random.Random(0))
    assert word_labels(first, "token_document_relation_labels")[0] == [1, 0, 0, 1, -100]
    assert word_labels(second, "token_document_relation_labels")[0][:2] == [0, 1]


def test_token_document_relation_skips(tokenizer, documents, corpus_view):
    task = TokenDocumentRelationTask(TokenDocumentRelationSettings(), tokenizer, MAX_LEN)
    single = next(d for d in documents if d.id == "doc-single")
    with pytest.raises(SkipDocument) as skip:
        task.build_examples(single, corpus_view, random.Random(0))
    assert skip.value.reason == "single_segment"
    with pytest.raises(SkipDocument) as skip:
        task.build_examples(crafted(), corpus_view, random.Random(0))
    assert skip.value.reason == "no_sentences"
    two_paragraphs = crafted(["A short one."], ["Another one."])
    assert len(task.build_examples(two_paragraphs, corpus_view, random.Random(0))) == 2
    chunk = TokenDocumentRelationTask(
        TokenDocumentRelationSettings(segment_by="chunk"), tokenizer, MAX_LEN
    )
    with pytest.raises(SkipDocument, match="single_segment"):
        chunk.build_examples(two_paragraphs, corpus_view, random.Random(0))
    counts = task.label_counts(columns_of(all_examples(task, documents, corpus_view)))
    assert counts["in_other_segments"] > 0 and counts["only_this_segment"] > 0


# ---------------------------------------------------------------- every task: batches and forward

TASKS = {
    "knowledge_masking": (KnowledgeMaskingTask, KnowledgeMaskingSettings),
    "capitalization": (CapitalizationTask, CapitalizationSettings),
    "token_document_relation": (TokenDocumentRelationTask, TokenDocumentRelationSettings),
}


def build(name, tokenizer, max_len=MAX_LEN):
    cls, settings_cls = TASKS[name]
    return cls(settings_cls(), tokenizer, max_len)


# The contract (columns, collate, loss, gradient, metrics) of these tasks is checked once,
# for every registered task, in test_task_contract.py.


@pytest.mark.parametrize("name", ["capitalization", "token_document_relation"])
def test_label_tasks_do_not_attach_to_sentence_batches(name, tokenizer, documents, corpus_view):
    batch, columns = sentence_distance_batch(tokenizer, documents, corpus_view)
    keys = set(batch)
    assert not build(name, tokenizer).attach(batch, columns, torch.Generator().manual_seed(0))
    assert set(batch) == keys


# ---------------------------------------------------------------- properties over random documents

WORDS = ["ada", "lovelace", "paris", "the", "engine", "of", "new", "york", "river", "1815", ","]
CASES = [str.lower, str.capitalize, str.upper]
cased_words = st.tuples(st.sampled_from(WORDS), st.sampled_from(CASES)).map(lambda p: p[1](p[0]))
sentence_strategy = st.lists(cased_words, min_size=1, max_size=12).map(lambda w: " ".join(w) + ".")
documents_strategy = st.lists(
    st.tuples(sentence_strategy, st.booleans()), min_size=0, max_size=6
).map(
    lambda pairs: [
        [s for s, _ in pairs[i:j]]
        for i, j in zip(
            [0] + [k + 1 for k, (_, brk) in enumerate(pairs) if brk],
            [k + 1 for k, (_, brk) in enumerate(pairs) if brk] + [len(pairs)],
            strict=True,
        )
        if pairs[i:j]
    ]
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paragraphs=documents_strategy, max_len=st.sampled_from([8, 16, 64]), seed=st.integers(0, 9))
def test_random_documents(paragraphs, max_len, seed, tokenizer, corpus_view):
    document = Document("random", None, tuple(Paragraph(tuple(p)) for p in paragraphs))
    special = set(tokenizer.all_special_ids)
    for name in TASKS:
        task = build(name, tokenizer, max_len)
        try:
            examples = task.build_examples(document, corpus_view, random.Random(seed))
        except SkipDocument:
            continue
        again = task.build_examples(document, corpus_view, random.Random(seed))
        assert examples == again
        for example in examples:
            length = len(example["input_ids"])
            assert length <= max_len
            assert set(example) == set(SHARED) | set(task.example_columns())
            for key, kind in task.example_columns().items():
                if kind == "int_list":
                    assert len(example[key]) == length
                else:
                    assert example[key] >= 0
            for key in ("capitalization_labels", "token_document_relation_labels"):
                if key in example:
                    assert set(example[key]) <= {IGNORE_INDEX, 0, 1}
                    assert all(
                        s or y == IGNORE_INDEX
                        for s, y in zip(example["word_starts"], example[key], strict=True)
                    )
            for key in (PHRASE_UNITS, ENTITY_UNITS):
                if key in example:
                    for token, unit in zip(example["input_ids"], example[key], strict=True):
                        assert unit >= 0 and (unit == 0) == (token in special)
        if examples:
            batch = task.collate(columns_of(examples), torch.Generator().manual_seed(seed))
            gathers = {k for k in batch if k.endswith(("_index", "_targets"))}
            assert all(batch[k].shape[0] == len(examples) for k in set(batch) - gathers)
            for key in {k.rsplit("_", 1)[0] for k in gathers}:
                # masked-LM labels also as a flat gather: every labelled (B*T) position in
                # order, padded with position 0 / IGNORE_INDEX to a multiple of 16
                flat = batch[key].reshape(-1)
                labelled = (flat != IGNORE_INDEX).nonzero().squeeze(1).tolist()
                index, targets = batch[f"{key}_index"], batch[f"{key}_targets"]
                assert len(index) == len(targets) == max(16, -(-len(labelled) // 16) * 16)
                assert index[: len(labelled)].tolist() == labelled
                assert targets[: len(labelled)].tolist() == flat[labelled].tolist()
                assert set(targets[len(labelled) :].tolist()) <= {IGNORE_INDEX}


def _reference_words(segment) -> list[tuple[int, int, int, int]]:
    """``PackedSegment.words`` as first written: walk back from the next word's first token."""
    starts, sources, offsets = segment.word_starts, segment.sentence_index, segment.offsets
    firsts = [position for position, start in enumerate(starts) if start]
    words = []
    for first, stop in zip(firsts, [*firsts[1:], len(starts)], strict=True):
        last = stop - 1
        while last > first and sources[last] != sources[first]:
            last -= 1
        words.append((first, sources[first], offsets[first][0], offsets[last][1]))
    return words


def _reference_units(segment, spans_per_sentence) -> tuple[list[int], int]:
    """``units_from_spans`` as first written: one unit id per token, in reading order."""
    numbers, current = [], 0
    for start, sentence in zip(segment.word_starts, segment.sentence_index, strict=True):
        current += start
        numbers.append(current if sentence >= 0 else 0)
    span_of_word = {}
    for position, sentence in enumerate(segment.sentence_index):
        if sentence < 0 or numbers[position] in span_of_word:
            continue
        start, end = segment.offsets[position]
        for k, (a, b) in enumerate(spans_per_sentence[sentence]):
            if start < b and a < end:
                span_of_word[numbers[position]] = (sentence, k)
                break
    unit_of: dict = {}
    units = [
        unit_of.setdefault(span_of_word.get(word, (-1, word)), len(unit_of) + 1) if word else 0
        for word in numbers
    ]
    return units, len(set(span_of_word.values()))


@st.composite
def packed_segments(draw):
    """A [CLS] ... [SEP] segment of 1-4 sentences, each a run of words of 1-3 sub-tokens with
    contiguous character offsets, and per sentence sorted non-overlapping character spans."""
    from pretrain_tasks.packing import PackedSegment

    starts, sources, offsets, spans = [0], [-1], [(0, 0)], []
    for sentence in range(draw(st.integers(1, 4))):
        position = 0
        for _ in range(draw(st.integers(1, 6))):
            position += draw(st.integers(0, 1))  # a space before the word, or none
            for piece in range(draw(st.integers(1, 3))):
                width = draw(st.integers(1, 4))
                starts.append(int(piece == 0))
                sources.append(sentence)
                offsets.append((position, position + width))
                position += width
        cuts = sorted(draw(st.lists(st.integers(0, position), max_size=6, unique=True)))
        spans.append([(a, b) for a, b in zip(cuts[::2], cuts[1::2], strict=False) if a < b])
    starts.append(0)
    sources.append(-1)
    offsets.append((0, 0))
    return PackedSegment([5] * len(starts), starts, sources, offsets), spans


@settings(max_examples=300, deadline=None)
@given(packed_segments())
def test_words_and_units_equal_the_token_by_token_definitions(case):
    segment, spans = case
    assert segment.words() == _reference_words(segment)
    assert units_from_spans(segment, spans) == _reference_units(segment, spans)
    assert units_from_spans(segment, [[] for _ in spans]) == _reference_units(
        segment, [[] for _ in spans]
    )
