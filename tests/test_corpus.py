"""Corpus reading, document building, held-out split and fingerprint (small files in tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ernie_cpt.config import DataConfig
from ernie_cpt.data import corpus as corpus_module
from ernie_cpt.data.corpus import (
    BUILTIN_CORPORA,
    DOCUMENT_FEATURES,
    SKIP_REASONS,
    build_documents,
    clean_wiki_line,
    clean_wiki_text,
    corpus_fingerprint,
    load_raw_corpus,
    split_heldout,
)
from ernie_cpt.data.segmentation import (
    PYSBD_CHUNK_CHARS,
    cut_at_whitespace,
    segment_text,
    split_blocks,
)
from pretrain_tasks.document import Document

RECORDS = [
    {"id": "a", "title": "Alpha", "text": "First sentence. Second one.\n\nNew paragraph here."},
    {"id": "b", "title": "Beta", "text": "Only one sentence"},
]
# What RECORDS become: (id, title, paragraphs as (heading, sentences)).
EXPECTED = [
    ("a", "Alpha", [(None, ["First sentence.", "Second one."]), (None, ["New paragraph here."])]),
    ("b", "Beta", [(None, ["Only one sentence"])]),
]


def make_config(tmp_path: Path, corpus: str | Path, **overrides) -> DataConfig:
    return DataConfig(corpus=str(corpus), cache_dir=str(tmp_path / "cache"), **overrides)


def build(config: DataConfig, num_proc: int = 1):
    return build_documents(config, num_proc=num_proc, progress=False)


def as_tuples(documents: datasets.Dataset) -> list[tuple]:
    out = []
    for record in documents:
        doc = Document.from_record(record)
        out.append((doc.id, doc.title, [(p.heading, list(p.sentences)) for p in doc.paragraphs]))
    return out


def assert_nothing_lost(stats: dict[str, int], skipped: dict[str, int]) -> None:
    assert set(skipped) == set(SKIP_REASONS)
    assert stats["raw_records"] == stats["documents"] + sum(skipped.values())


# --------------------------------------------------------------------------- input formats


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_jsonl_file(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", RECORDS)
    documents, stats, skipped = build(make_config(tmp_path, path))
    assert as_tuples(documents) == EXPECTED
    assert documents.features == DOCUMENT_FEATURES
    assert stats["documents"] == 2
    assert stats["sentences"] == 4
    assert stats["paragraphs"] == 3
    assert stats["one_sentence_documents"] == 1
    assert stats["characters"] == sum(len(s) for _, _, ps in EXPECTED for _, ss in ps for s in ss)
    assert skipped == dict.fromkeys(SKIP_REASONS, 0)


def test_json_array_file(tmp_path):
    path = tmp_path / "corpus.json"
    path.write_text(json.dumps(RECORDS), encoding="utf-8")
    documents, _, _ = build(make_config(tmp_path, path))
    assert as_tuples(documents) == EXPECTED


def test_json_array_is_read_element_by_element(tmp_path, monkeypatch):
    # Tiny chunks: every element and the UTF-8 of "é" straddle chunk boundaries.
    monkeypatch.setattr(corpus_module, "_ARRAY_CHUNK", 3)
    records = [
        {"id": 10**20, "title": "Café", "text": "Déjà vu. Again."},
        {"id": "n", "text": "Numbers after me."},
    ]
    path = tmp_path / "corpus.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(records, ensure_ascii=False, indent=1).encode())
    documents, _, skipped = build(make_config(tmp_path, path))
    assert documents["id"][:] == [str(10**20), "n"]
    assert documents["title"][:] == ["Café", None]
    assert sum(skipped.values()) == 0
    values = list(corpus_module._json_array_values(path.open("rb")))
    assert values == records


@pytest.mark.parametrize(
    ("data", "kept", "bad"),
    [
        (b'[{"text": "One."}, {"text": ', 1, "invalid_json"),  # cut off
        (b'[{"text": "One."}, {"text": "Two."},]', 2, "invalid_json"),  # trailing comma
        (b'[{"text": "One."} {"text": "Two."}]', 1, "invalid_json"),  # comma missing
        (b'[{"text": "One."}] trailing', 1, "invalid_json"),
        (b'[{"text": "One."}, ' + b"[" * 100_000 + b"]" * 100_000 + b"]", 1, "too_deeply_nested"),
    ],
)
def test_bad_json_array_keeps_the_elements_before_the_fault(tmp_path, data, kept, bad):
    path = tmp_path / "corpus.json"
    path.write_bytes(data)
    documents, stats, skipped = build(make_config(tmp_path, path))
    assert documents.num_rows == kept
    assert stats["bad_lines"] == {bad: [f"corpus.json:{kept + 1}"]}


def test_csv_file_with_invalid_utf8(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_bytes(
        b'id,title,text\na,Alpha,"First sentence. Second one.\n\nNew paragraph here."\n'
        b"b,Beta,Only one sentence\n3,Gamma,Caf\xe9 au lait.\n,,\n,Delta,No id.\n"
    )
    documents, stats, skipped = build(make_config(tmp_path, path))
    assert as_tuples(documents) == [
        *EXPECTED,
        ("3", "Gamma", [(None, ["Caf\ufffd au lait."])]),
        ("doc-4", "Delta", [(None, ["No id."])]),
    ]
    assert stats["invalid_utf8_documents"] == 1
    assert skipped["missing_text"] == 1  # the empty row: pandas reads "" as missing


def test_parquet_file(tmp_path):
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist(RECORDS), path)
    documents, _, _ = build(make_config(tmp_path, path))
    assert as_tuples(documents) == EXPECTED


def test_format_overrides_suffix(tmp_path):
    path = write_jsonl(tmp_path / "corpus.dat", RECORDS)
    with pytest.raises(ValueError, match="set data.format"):
        load_raw_corpus(make_config(tmp_path, path))
    documents, _, _ = build(make_config(tmp_path, path, format="json"))
    assert as_tuples(documents) == EXPECTED


def test_text_file_by_document_paragraph_and_line(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text(
        "== Part ==\nA first\nwrapped line. Then more.\n\n\n\nLast one.\n", encoding="utf-8"
    )

    by_document, _, _ = build(make_config(tmp_path, path, text_sample_by="document"))
    assert as_tuples(by_document) == [
        (
            "book.txt",
            "book",  # a .txt file read as one document is titled by its file name
            [("Part", ["A first wrapped line.", "Then more."]), ("Part", ["Last one."])],
        )
    ]

    by_paragraph, stats, skipped = build(make_config(tmp_path, path, text_sample_by="paragraph"))
    # datasets splits on "\n\n" and drops empty blocks; "\nLast one.\n" keeps its newlines.
    assert [d.sentences() for d in map(Document.from_record, by_paragraph)] == [
        ["A first wrapped line.", "Then more."],
        ["Last one."],
    ]
    assert by_paragraph["id"][:] == ["doc-0", "doc-1"]
    assert stats["raw_records"] == 2

    by_line, stats, skipped = build(make_config(tmp_path, path, text_sample_by="line"))
    assert [d.sentences() for d in map(Document.from_record, by_line)] == [
        ["A first"],
        ["wrapped line.", "Then more."],
        ["Last one."],
    ]
    # The heading line alone has no sentences; the three blank lines are empty documents.
    assert skipped["no_sentences"] == 1
    assert skipped["empty_document"] == 3
    assert_nothing_lost(stats, skipped)


def test_text_folder_recursive_sorted_with_invalid_utf8(tmp_path):
    folder = tmp_path / "books"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_bytes(b"Second file. Bad \xff byte.")
    (folder / "sub" / "a.txt").write_text("In a subfolder.", encoding="utf-8")
    (folder / "a.txt").write_text("First file.", encoding="utf-8")
    (folder / "README.md").write_text("ignored: unknown suffix", encoding="utf-8")
    (folder / ".hidden.txt").write_text("ignored: hidden", encoding="utf-8")
    documents, stats, _ = build(make_config(tmp_path, folder))
    assert as_tuples(documents) == [
        ("a.txt", "a", [(None, ["First file."])]),
        ("b.txt", "b", [(None, ["Second file.", "Bad \ufffd byte."])]),
        ("sub/a.txt", "a", [(None, ["In a subfolder."])]),
    ]
    assert stats["invalid_utf8_documents"] == 1


def test_jsonl_folder_and_mixed_folder_error(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    write_jsonl(folder / "part-1.jsonl", RECORDS[1:])
    write_jsonl(folder / "part-0.jsonl", RECORDS[:1])
    documents, _, _ = build(make_config(tmp_path, folder))
    assert as_tuples(documents) == EXPECTED

    (folder / "extra.csv").write_text("text\nhello.\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"mixes file types \(1 csv, 2 json\)"):
        load_raw_corpus(make_config(tmp_path, folder))
    documents, _, _ = build(make_config(tmp_path, folder, format="json"))
    assert as_tuples(documents) == EXPECTED


def test_empty_folder_error(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.md").write_text("no data here", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no data files"):
        load_raw_corpus(make_config(tmp_path, folder))


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "saved"))
    documents, _, _ = build(make_config(tmp_path, tmp_path / "saved"))
    assert as_tuples(documents) == EXPECTED

    splits = {
        "train": datasets.Dataset.from_list(RECORDS),
        "validation": datasets.Dataset.from_list(RECORDS[:1]),
    }
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved_dict"))
    documents, _, _ = build(make_config(tmp_path, tmp_path / "saved_dict", split="validation"))
    assert as_tuples(documents) == EXPECTED[:1]
    with pytest.raises(ValueError, match=r'no split \'valid\'.*did you mean "validation"'):
        load_raw_corpus(make_config(tmp_path, tmp_path / "saved_dict", split="valid"))


# --------------------------------------------------------------------------- errors


def test_missing_text_column_lists_available_columns(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"id": "a", "texts": "Hello."}])
    with pytest.raises(ValueError) as error:
        load_raw_corpus(make_config(tmp_path, path))
    message = str(error.value)
    assert "no column 'text'" in message
    assert 'did you mean "texts"' in message
    assert "available columns: id, texts" in message


def test_unknown_local_path(tmp_path):
    with pytest.raises(ValueError, match="no such file or folder"):
        load_raw_corpus(make_config(tmp_path, tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="no such file or folder"):
        load_raw_corpus(make_config(tmp_path, "./data/missing"))


def test_hub_name_failure_is_a_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="'someone/corpus': no local file or folder of that name"):
        load_raw_corpus(make_config(tmp_path, "someone/corpus"))


def test_empty_file_error_and_zero_documents(tmp_path):
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty.jsonl \(the files are empty\)"):
        load_raw_corpus(make_config(tmp_path, tmp_path / "empty.jsonl"))
    path = write_jsonl(tmp_path / "corpus.jsonl", RECORDS)
    documents, stats, skipped = build(make_config(tmp_path, path, max_documents=0))
    assert len(documents) == 0 and documents.features == DOCUMENT_FEATURES
    assert stats["raw_records"] == 0 and sum(skipped.values()) == 0


def test_unknown_builtin_name(tmp_path):
    with pytest.raises(ValueError, match='did you mean "builtin:wikipedia-sample"'):
        load_raw_corpus(make_config(tmp_path, "builtin:wikipedia-sampel"))


# --------------------------------------------------------------------------- bad input


LONG_LINE = "abcdefghi " * 20_000  # 200,000 chars, no punctuation: 100 pieces of 1,999 chars


def write_bad_corpus(path: Path) -> Path:
    records = [
        {"id": "empty", "text": ""},
        {"id": "spaces", "text": "  \n\t \n"},
        {"id": "one", "title": "One", "text": "Just one sentence here."},
        {"id": "bytes", "text": "Caf@@ au lait. Second sentence."},  # @@: two invalid bytes
        {"id": "long", "text": LONG_LINE},
        {"id": "no-text", "title": "Missing"},
        {"id": "null-text", "text": None},
        {"id": "number", "text": 42},
        {"id": "too-long", "text": "word " * 60_000},
        {"id": "headings-only", "text": "== A ==\n\n== B ==\n"},
        {"id": "dup", "text": "First copy. Two sentences."},
        {"id": "dup", "text": "Second copy."},
        {"text": "No id at all."},
    ]
    lines = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
    path.write_bytes(lines.replace(b"@@", b"\xff\xfe"))
    return path


def test_bad_input_corpus_counts_every_skip(tmp_path):
    raw_bytes = write_bad_corpus(tmp_path / "bad.jsonl").read_bytes()
    assert b"\xff\xfe" in raw_bytes  # really invalid UTF-8 on disk
    config = make_config(tmp_path, tmp_path / "bad.jsonl", max_document_chars=250_000)
    documents, stats, skipped = build(config)

    assert skipped == {
        "missing_text": 2,
        "non_string_text": 1,
        "empty_document": 2,
        "document_too_long": 1,
        "no_sentences": 1,
        "invalid_json": 0,
        "not_an_object": 0,
        "too_deeply_nested": 0,
    }
    # an id-less record is numbered among the rows read (the non-string-text line is dropped
    # by the reader, before numbering)
    assert documents["id"][:] == ["one", "bytes", "long", "dup", "dup#2", "doc-11"]
    assert documents.features == DOCUMENT_FEATURES
    by_id = {r["id"]: Document.from_record(r) for r in documents}
    assert by_id["one"].title == "One"
    assert by_id["bytes"].sentences() == ["Caf\ufffd\ufffd au lait.", "Second sentence."]
    long_sentences = by_id["long"].sentences()
    assert len(long_sentences) == 100
    assert {len(s) for s in long_sentences} == {1999}
    assert " ".join(long_sentences) == LONG_LINE.strip()
    assert stats == {
        "raw_records": 13,
        "documents": 6,
        "paragraphs": 6,
        "sentences": 1 + 2 + 100 + 2 + 1 + 1,
        "characters": sum(len(s) for d in by_id.values() for s in d.sentences()),
        "one_sentence_documents": 3,
        "long_sentence_pieces": 100,
        "invalid_utf8_documents": 1,
        "duplicate_ids_renamed": 1,
        "bad_lines": {"non_string_text": ["bad.jsonl:8"]},
    }
    assert_nothing_lost(stats, skipped)


def test_max_documents_takes_the_first_records(tmp_path):
    config = make_config(tmp_path, write_bad_corpus(tmp_path / "bad.jsonl"), max_documents=4)
    documents, stats, skipped = build(config)
    assert documents["id"][:] == ["one", "bytes"]
    assert stats["raw_records"] == 4
    assert skipped["empty_document"] == 2
    assert_nothing_lost(stats, skipped)


def test_same_documents_with_one_or_two_processes(tmp_path):
    records = [
        {"id": f"d{i % 7}", "text": f"Document {i} starts. It has {i} words. " * (i % 3 + 1)}
        for i in range(40)
    ]
    records[5]["text"] = ""
    path = write_jsonl(tmp_path / "many.jsonl", records)
    one = build(make_config(tmp_path, path), num_proc=1)
    two = build(make_config(tmp_path, path), num_proc=2)
    assert one[0].to_list() == two[0].to_list()
    assert one[1:] == two[1:]
    assert one[1]["duplicate_ids_renamed"] == 40 - 1 - 7


# --------------------------------------------------------------------------- segmentation


def test_split_blocks_headings_and_wrapped_lines():
    text = "Intro line\nwrapped  here.\n \n== Section ==\nBody.\n=== Sub ===\nMore.\r\n\r\nEnd."
    assert split_blocks(text) == [
        (None, "Intro line wrapped here."),
        ("Section", "Body."),
        ("Sub", "More."),
        ("Sub", "End."),
    ]


def test_cut_at_whitespace_and_hard_cut():
    assert cut_at_whitespace("aaa bbb ccc", 7) == ["aaa bbb", "ccc"]
    assert cut_at_whitespace("x" * 10, 4) == ["xxxx", "xxxx", "xx"]
    segmented = segment_text("y" * 9000, 2000)
    assert [len(s) for _, ss in segmented.paragraphs for s in ss] == [2000] * 4 + [1000]
    assert segmented.long_sentence_pieces == 5


def test_long_paragraph_is_chunked_without_changing_sentences():
    sentences = [f"Sentence number {i} is here, said Dr. Who." for i in range(1500)]
    paragraph = " ".join(sentences)  # about 64,000 characters: chunked before pysbd
    assert len(paragraph) > 10 * PYSBD_CHUNK_CHARS
    segmented = segment_text(paragraph, 2000, "pysbd")
    assert segmented.paragraphs == [(None, sentences)]
    assert segmented.long_sentence_pieces == 0


def test_punctuation_only_fragments_are_glued():
    segmented = segment_text('He said "it is done." Then left.', 2000)
    assert all(any(c.isalnum() for c in s) for _, ss in segmented.paragraphs for s in ss)


# --------------------------------------------------------------------------- built-in corpus


def test_clean_wiki_markup():
    assert clean_wiki_line("'''Achilles''' (; , ''Akhilleus'', ) was a hero.") == (
        "Achilles (Akhilleus) was a hero."
    )
    assert clean_wiki_line("Born ( ; ) in ''Rome''.") == "Born in Rome."
    assert clean_wiki_line("* list item") == "list item"
    assert clean_wiki_line("File:Photo.jpg|A caption") == ""
    assert clean_wiki_line("A caption|alt=An alt text") == "A caption"
    assert clean_wiki_line("287") == ""
    text = "Intro.\n\n==History==\nOld.\n\n== References ==\n* A book\n==Later==\nNew."
    assert clean_wiki_text(text) == "Intro.\n\n== History ==\n\nOld.\n\n== Later ==\n\nNew."


def test_builtin_wikipedia_sample_has_titles_and_headings(tmp_path):
    config = make_config(tmp_path, "builtin:wikipedia-sample")
    raw = load_raw_corpus(config)
    assert raw.num_rows == 107
    assert raw["title"][:3] == ["Anarchism", "Autism", "Albedo"]
    assert "Wikipedia" in BUILTIN_CORPORA["builtin:wikipedia-sample"].license

    documents, stats, skipped = build(
        make_config(tmp_path, "builtin:wikipedia-sample", max_documents=3)
    )
    docs = [Document.from_record(r) for r in documents]
    assert [d.title for d in docs] == ["Anarchism", "Autism", "Albedo"]
    assert [d.id for d in docs] == ["12", "25", "39"]
    headings = {p.heading for d in docs for p in d.paragraphs}
    assert {"Etymology and terminology", "History", "Origins"} <= headings
    sentences = docs[0].sentences()
    assert sentences[0].startswith("Anarchism is a political philosophy")
    assert not any("''" in s or "==" in s for d in docs for s in d.sentences())
    assert stats["documents"] == 3 and stats["sentences"] > 500
    assert_nothing_lost(stats, skipped)


# --------------------------------------------------------------------------- held-out split


def documents_with_ids(ids: list[str]) -> datasets.Dataset:
    records = [Document(i, None, ()).to_record() for i in ids]
    return datasets.Dataset.from_list(records, features=DOCUMENT_FEATURES)


def test_split_heldout_is_a_stable_partition_by_id():
    ids = [f"doc-{i}" for i in range(200)]
    train, heldout = split_heldout(documents_with_ids(ids), 0.2, seed=1)
    assert sorted(train["id"][:] + heldout["id"][:]) == sorted(ids)
    assert not set(train["id"][:]) & set(heldout["id"][:])
    assert 20 <= len(heldout) <= 60
    assert train["id"][:] == [i for i in ids if i in set(train["id"][:])]  # order kept

    again = split_heldout(documents_with_ids(ids[::-1]), 0.2, seed=1)[1]  # by id, not position
    assert set(again["id"][:]) == set(heldout["id"][:])
    subset = split_heldout(documents_with_ids(ids[:100]), 0.2, seed=1)[1]
    assert set(subset["id"][:]) == {i for i in heldout["id"][:] if i in set(ids[:100])}
    other_seed = split_heldout(documents_with_ids(ids), 0.2, seed=2)[1]
    assert set(other_seed["id"][:]) != set(heldout["id"][:])


def test_split_heldout_minimums():
    two = documents_with_ids(["a", "b"])
    train, heldout = split_heldout(two, 1e-12, seed=0)
    assert (len(train), len(heldout)) == (1, 1)
    train, heldout = split_heldout(documents_with_ids(["a", "b", "c"]), 0.999, seed=0)
    assert (len(train), len(heldout)) == (1, 2)
    train, heldout = split_heldout(two, 0.0, seed=0)
    assert (len(train), len(heldout)) == (2, 0)
    for seed in range(5):  # a single document always stays in train
        train, heldout = split_heldout(documents_with_ids(["a"]), 0.9, seed=seed)
        assert (len(train), len(heldout)) == (1, 0)
    with pytest.raises(ValueError):
        split_heldout(two, 1.0, seed=0)


# --------------------------------------------------------------------------- fingerprint


def test_corpus_fingerprint(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", RECORDS)
    config = make_config(tmp_path, path)
    first = corpus_fingerprint(config)
    assert first == corpus_fingerprint(make_config(tmp_path, path))
    assert first == corpus_fingerprint(make_config(tmp_path, path, heldout_fraction=0.5))
    assert first != corpus_fingerprint(make_config(tmp_path, path, max_sentence_chars=100))
    write_jsonl(path, RECORDS[:1])
    assert first != corpus_fingerprint(config)

    builtin = make_config(tmp_path, "builtin:wikipedia-sample")
    assert corpus_fingerprint(builtin) == corpus_fingerprint(builtin)
    hub = corpus_fingerprint(make_config(tmp_path, "someone/corpus"))
    assert hub != corpus_fingerprint(make_config(tmp_path, "someone/corpus", split="test"))


def test_module_names_its_sources():
    doc = corpus_module.__doc__ or ""
    assert "CC BY-SA" in doc and "LGPL-2.1" in doc
