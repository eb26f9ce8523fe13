"""Read a raw corpus with ``datasets`` and turn it into documents of paragraphs of sentences.

Sources (``DataConfig.corpus``): a local file or folder of JSON Lines/JSON, Parquet, CSV,
Arrow or plain text files (compressed ``.gz``/``.bz2``/``.xz``/``.zst`` too); a
``save_to_disk`` folder; ``builtin:*`` names; anything else is taken as a hub dataset name.

Built-in corpus ``builtin:wikipedia-sample``: the English Wikipedia dump excerpt that ships
inside the ``gensim`` wheel, file ``gensim/test/test_data/enwiki-latest-pages-articles1.xml-
p000000010p000030302-shortened.bz2``. Its 107 pages that are not redirects (106 articles; one
project page is empty once markup is removed) are read with gensim's ``extract_pages`` +
``filter_wiki``; we keep titles and ``== Section ==`` headings and clean the remaining markup
(see ``clean_wiki_text``). Licenses: the Wikipedia text is CC BY-SA (Wikipedia contributors,
https://en.wikipedia.org); gensim is LGPL-2.1. Nothing is downloaded.

``build_documents`` applies, per record, in order: text missing -> skip ``missing_text``;
not a string -> ``non_string_text``; empty or whitespace only -> ``empty_document``; longer
than ``max_document_chars`` -> ``document_too_long``; then ``segmentation.segment_text``
(paragraph, heading and sentence rules are documented there); no sentence left ->
``no_sentences``. Every record is either kept or counted under one reason.
"""

from __future__ import annotations

import bz2
import codecs
import collections
import contextlib
import functools
import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import lzma
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from ernie_cpt.config import DataConfig, did_you_mean
from ernie_cpt.data.segmentation import segment_text

# Bump when the reading/cleaning/splitting rules change, so cached documents are rebuilt.
PIPELINE_VERSION = 1

DOCUMENT_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "paragraphs": datasets.List(
            {
                "heading": datasets.Value("string"),
                "sentences": datasets.List(datasets.Value("string")),
            }
        ),
    }
)
# Per-record bookkeeping columns that build_documents adds, sums into stats, then drops.
_BOOKKEEPING_FEATURES = {
    "_skip": datasets.Value("string"),
    "_invalid_utf8": datasets.Value("bool"),
    "_sentences": datasets.Value("int64"),
    "_paragraphs": datasets.Value("int64"),
    "_characters": datasets.Value("int64"),
    "_long_sentence_pieces": datasets.Value("int64"),
}
SKIP_REASONS = (
    "missing_text",
    "non_string_text",
    "empty_document",
    "document_too_long",
    "no_sentences",
)

# Suffix -> datasets builder name; compression suffixes are looked through.
FORMAT_SUFFIXES = {
    ".jsonl": "json",
    ".json": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".arrow": "arrow",
    ".txt": "text",
    ".text": "text",
}
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zstd")
FORMATS = ("json", "parquet", "csv", "arrow", "text")
SAMPLE_BY = ("document", "paragraph", "line")
_DECOMPRESS: dict[str, Callable[[bytes], bytes]] = {
    ".gz": gzip.decompress,
    ".bz2": bz2.decompress,
    ".xz": lzma.decompress,
}
# Files up to this size are fingerprinted by content, larger ones by size and mtime.
_CONTENT_HASH_MAX_BYTES = 16 << 20
REPLACEMENT_CHARACTER = "\ufffd"


# --------------------------------------------------------------------------- built-in corpora


@dataclass(frozen=True)
class BuiltinCorpus:
    """A corpus shipped inside an installed package: no download needed."""

    description: str
    license: str
    load_records: Callable[[], list[dict[str, str]]]
    # A string that changes when the underlying data may change (a package version).
    source_version: Callable[[], str]


GENSIM_WIKI_FILE = (
    "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)
# Trailing sections that hold citations and link lists rather than prose.
_WIKI_DROPPED_SECTIONS = {
    "references",
    "external links",
    "see also",
    "further reading",
    "notes",
    "bibliography",
    "footnotes",
    "sources",
    "citations",
    "notes and references",
    "works cited",
}
_WIKI_HEADING = re.compile(r"^\s*(={2,6})\s*(.*?)\s*\1\s*$")
_WIKI_LIST_MARKER = re.compile(r"^[*#:;]+\s*")
_WIKI_GALLERY_LINE = re.compile(r"^(?:(?:File|Image):|[^|]*\.(?:jpe?g|png|gif|svg|tiff?)\|)", re.I)
_WIKI_IMAGE_OPTIONS = re.compile(
    r"\|(?:alt=.*$|thumb(?:nail)?\b|upright\b|left\b|right\b|center\b|\d+(?:x\d+)?px)"
)
_WIKI_EMPTY_PARENS = re.compile(r"\(\s*[;,]?(?:\s*[;,])*\s*\)")
_WIKI_PAREN_LEADING_PUNCT = re.compile(r"\(\s*[;,][\s;,]*")
_WIKI_PAREN_TRAILING_PUNCT = re.compile(r"[\s;,]*[;,]\s*\)")
_WIKI_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,;.:)])")


def _gensim_file() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("builtin:wikipedia-sample needs the gensim package (pip install gensim)")
    return Path(next(iter(spec.submodule_search_locations))) / GENSIM_WIKI_FILE


def _gensim_version() -> str:
    return "gensim-" + importlib.metadata.version("gensim")


def clean_wiki_line(line: str) -> str:
    """Remove the markup that ``filter_wiki`` leaves in one line of article text."""
    line = _WIKI_LIST_MARKER.sub("", line.strip())
    if _WIKI_GALLERY_LINE.match(line):
        return ""
    line = _WIKI_IMAGE_OPTIONS.sub(" ", line)
    line = re.sub(r"(?<=\w)'''(?=s\b)", "'", line)  # ''Title'''s: italics then 's
    line = re.sub(r"'{2,}", "", line)  # '''bold''' and ''italic'' quote marks
    line = _WIKI_EMPTY_PARENS.sub("", line)  # "( ; , )" left by removed templates
    line = _WIKI_PAREN_LEADING_PUNCT.sub("(", line)  # "(; born 1947)" -> "(born 1947)"
    line = _WIKI_PAREN_TRAILING_PUNCT.sub(")", line)  # "(Akhilleus, )" -> "(Akhilleus)"
    line = _WIKI_SPACE_BEFORE_PUNCT.sub(r"\1", line)
    if sum(c.isalpha() for c in line) < 2:  # table cells: "287", "0.04", "{", "k"
        return ""
    return " ".join(line.split())


def clean_wiki_text(text: str) -> str:
    """Article text from ``filter_wiki`` -> one paragraph per line, blank-line separated.

    Headings are kept as ``== Heading ==`` lines; sections listed in
    ``_WIKI_DROPPED_SECTIONS`` (references, external links, ...) are left out.
    """
    out: list[str] = []
    dropping = False
    for raw in text.splitlines():
        heading = _WIKI_HEADING.match(raw)
        if heading:
            title = clean_wiki_line(heading.group(2))
            dropping = title.lower() in _WIKI_DROPPED_SECTIONS
            if title and not dropping:
                out.append(f"== {title} ==")
            continue
        line = "" if dropping else clean_wiki_line(raw)
        if line:
            out.append(line)
    return "\n\n".join(out)


def load_wikipedia_sample() -> list[dict[str, str]]:
    """The gensim test-data Wikipedia pages as {id, title, text} records (redirects left out)."""
    return [dict(zip(("id", "title", "text"), page, strict=True)) for page in _wikipedia_pages()]


@functools.lru_cache(maxsize=1)
def _wikipedia_pages() -> tuple[tuple[str, str, str], ...]:
    """(page id, title, cleaned text) per page; parsed once per process (about 2 s)."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    pages = []
    with bz2.open(_gensim_file()) as dump:
        for title, markup, page_id in extract_pages(dump, filter_namespaces=("0",)):
            if not markup.lstrip().upper().startswith("#REDIRECT"):
                pages.append((page_id, title, clean_wiki_text(filter_wiki(markup))))
    return tuple(pages)


BUILTIN_CORPORA: dict[str, BuiltinCorpus] = {
    "builtin:wikipedia-sample": BuiltinCorpus(
        description="107 English Wikipedia pages (106 with text) from gensim's test data",
        license="Wikipedia text: CC BY-SA (Wikipedia contributors); gensim: LGPL-2.1",
        load_records=load_wikipedia_sample,
        source_version=_gensim_version,
    ),
}


# --------------------------------------------------------------------------- raw corpus


def load_raw_corpus(config: DataConfig) -> datasets.Dataset:
    """Read ``config.corpus`` into a ``datasets.Dataset`` of raw records (see module doc)."""
    corpus = config.corpus
    if corpus.startswith("builtin:"):
        dataset = _load_builtin(corpus)
    elif Path(corpus).expanduser().exists():
        dataset = _load_local(Path(corpus).expanduser(), config)
    elif _looks_like_path(corpus):
        raise ValueError(f"corpus {corpus!r}: no such file or folder")
    else:
        dataset = _load_hub(corpus, config.split, _datasets_cache_dir(config))
    _check_text_field(dataset, config)
    return dataset


def _load_builtin(name: str) -> datasets.Dataset:
    if name not in BUILTIN_CORPORA:
        raise ValueError(
            f"unknown built-in corpus {name!r}{did_you_mean(name, BUILTIN_CORPORA)}; "
            f"available: {', '.join(BUILTIN_CORPORA)}"
        )
    return datasets.Dataset.from_list(BUILTIN_CORPORA[name].load_records())


def _looks_like_path(corpus: str) -> bool:
    """True for strings that can only be meant as local paths (a hub name is "owner/name")."""
    if corpus.startswith(("/", "./", "../", "~", ".\\")) or "\\" in corpus:
        return True
    return corpus.count("/") > 1 or _suffix_format(Path(corpus)) is not None


def _load_hub(name: str, split: str, cache_dir: str | None) -> datasets.Dataset:
    try:
        dataset = datasets.load_dataset(name, split=split, cache_dir=cache_dir)
    except Exception as error:  # offline, unknown name, missing split: all end here
        raise ValueError(
            f"corpus {name!r}: no local file or folder of that name exists, and loading it "
            f"as a Hugging Face hub dataset (split {split!r}) failed: {error}"
        ) from error
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(f"corpus {name!r}: expected one split, got {type(dataset).__name__}")
    return dataset


def _check_text_field(dataset: datasets.Dataset, config: DataConfig) -> None:
    if config.text_field not in dataset.column_names:
        columns = ", ".join(dataset.column_names) or "none"
        raise ValueError(
            f"corpus {config.corpus!r} has no column {config.text_field!r} "
            f"(data.text_field){did_you_mean(config.text_field, dataset.column_names)}; "
            f"available columns: {columns}"
        )


def _suffix_format(path: Path) -> str | None:
    """The builder for a file name, looking through a compression suffix; None if unknown."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes.pop()
    return FORMAT_SUFFIXES.get(suffixes[-1]) if suffixes else None


def is_saved_dataset(path: Path) -> bool:
    """True for a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return path.is_dir() and any(
        (path / name).is_file() for name in ("state.json", "dataset_info.json", "dataset_dict.json")
    )


def _datasets_cache_dir(config: DataConfig) -> str | None:
    """datasets' own cache: ``<data.cache_dir>/datasets``, or datasets' default when unset."""
    return (
        None if config.cache_dir is None else str(Path(config.cache_dir).expanduser() / "datasets")
    )


def _load_local(path: Path, config: DataConfig) -> datasets.Dataset:
    if is_saved_dataset(path):
        return _load_saved(path, config)
    files, builder = corpus_files(path, config.format)
    cache_dir = _datasets_cache_dir(config)
    if builder == "text":
        return _load_text(files, path, config)
    if builder == "json":
        return _load_json(files, cache_dir)
    kwargs = {"encoding_errors": "replace"} if builder == "csv" else {}
    return _load_files(builder, files, cache_dir=cache_dir, **kwargs)


def _load_saved(path: Path, config: DataConfig) -> datasets.Dataset:
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if config.split not in loaded:
            raise ValueError(
                f"corpus {config.corpus!r} has no split {config.split!r} (data.split)"
                f"{did_you_mean(config.split, loaded)}; available splits: {', '.join(loaded)}"
            )
        loaded = loaded[config.split]
    return loaded


def corpus_files(path: Path, format: str | None = None) -> tuple[list[Path], str]:
    """The data files of a local corpus (sorted) and the ``datasets`` builder that reads them."""
    if format is not None and format not in FORMATS:
        raise ValueError(
            f"unknown data.format {format!r}{did_you_mean(format, FORMATS)}; use one of {FORMATS}"
        )
    if path.is_file():
        builder = format or _suffix_format(path)
        if builder is None:
            raise ValueError(
                f"corpus {str(path)!r}: cannot tell the format from the suffix; set data.format "
                f"to one of {FORMATS} (known suffixes: {', '.join(FORMAT_SUFFIXES)})"
            )
        return [path], builder
    return _folder_files(path, format)


def _folder_files(folder: Path, format: str | None) -> tuple[list[Path], str]:
    """Files under ``folder`` (recursively, sorted; names starting with . or _ left out)."""
    candidates = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)
    )
    by_format: dict[str, list[Path]] = {}
    for file in candidates:
        by_format.setdefault(_suffix_format(file) or "unknown", []).append(file)
    if format is not None and candidates:
        # The named format's files, or every file when none has a matching suffix.
        return by_format.get(format, candidates), format
    known = {name: files for name, files in by_format.items() if name != "unknown"}
    if not known:
        raise ValueError(
            f"corpus folder {str(folder)!r} holds no data files (looked for "
            f"{', '.join(FORMAT_SUFFIXES)}, optionally compressed, in all subfolders)"
        )
    if len(known) > 1:
        counts = ", ".join(f"{len(files)} {name}" for name, files in sorted(known.items()))
        raise ValueError(
            f"corpus folder {str(folder)!r} mixes file types ({counts}); keep one type "
            "per folder or set data.format to pick one"
        )
    ((builder, files),) = known.items()
    return files, builder


def _load_files(builder: str, files: list[Path], **kwargs: Any) -> datasets.Dataset:
    try:
        return datasets.load_dataset(
            builder, data_files=[str(f) for f in files], split="train", **kwargs
        )
    except Exception as error:  # e.g. StopIteration for an empty JSON file
        empty = " (the files are empty)" if all(f.stat().st_size == 0 for f in files) else ""
        names = ", ".join(str(f) for f in files[:3]) + (", ..." if len(files) > 3 else "")
        raise ValueError(
            f"datasets' {builder!r} reader could not read {names}{empty}: "
            f"{type(error).__name__}: {error}"
        ) from error


def _load_text(files: list[Path], root: Path, config: DataConfig) -> datasets.Dataset:
    if config.text_sample_by not in SAMPLE_BY:
        raise ValueError(
            f"unknown data.text_sample_by {config.text_sample_by!r}"
            f"{did_you_mean(config.text_sample_by, SAMPLE_BY)}; use one of {SAMPLE_BY}"
        )
    dataset = _load_files(
        "text",
        files,
        cache_dir=_datasets_cache_dir(config),
        sample_by=config.text_sample_by,
        encoding_errors="replace",
    )
    dataset = (
        dataset.rename_column("text", config.text_field) if config.text_field != "text" else dataset
    )
    if config.text_sample_by == "document" and len(dataset) == len(files):
        # One row per file, in file order: the relative path is a stable id.
        names = [f.name if root.is_file() else f.relative_to(root).as_posix() for f in files]
        dataset = dataset.add_column(config.id_field, names)
    return dataset


def _load_json(files: list[Path], cache_dir: str | None) -> datasets.Dataset:
    """JSON/JSON Lines; files with invalid UTF-8 are read again with replacement characters.

    datasets' JSON builder ignores ``encoding_errors`` for UTF-8 input and fails on invalid
    bytes (UnicodeDecodeError, or ValueError from ujson when a column has mixed types). After
    a failure, files that are not valid UTF-8 are decoded here with replacement and written
    next to datasets' cache (at a path derived from the file's identity, so the next load
    reuses them); the same builder then reads those copies.
    """
    # Checked before loading: pyarrow may accept the bytes and fail only when the column is
    # read, long after loading.
    invalid = {file for file in files if not _is_valid_utf8(file)}
    if not invalid:
        return _load_files("json", files, cache_dir=cache_dir)
    root = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "ernie_cpt_utf8_repaired"
    repaired = [_repaired_copy(file, root) if file in invalid else file for file in files]
    return _load_files("json", repaired, cache_dir=cache_dir)


def _decompressed_bytes(file: Path) -> bytes | None:
    """The file's bytes, decompressed by suffix; None for a compression we cannot undo here."""
    suffix = file.suffix.lower()
    if suffix in COMPRESSION_SUFFIXES and suffix not in _DECOMPRESS:
        return None
    return _DECOMPRESS.get(suffix, lambda data: data)(file.read_bytes())


def _is_valid_utf8(file: Path) -> bool:
    """Whether the (decompressed) file decodes as UTF-8; plain files are read in 1 MiB blocks."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        if file.suffix.lower() in COMPRESSION_SUFFIXES:
            data = _decompressed_bytes(file)
            if data is not None:
                data.decode("utf-8")
            return True
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                decoder.decode(block)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _repaired_copy(file: Path, root: Path) -> Path:
    """A UTF-8 copy of ``file`` with invalid bytes replaced by U+FFFD (made once)."""
    stat = file.stat()
    key = hashlib.sha256(f"{file.resolve()}\x00{stat.st_size}\x00{stat.st_mtime_ns}".encode())
    suffix = file.suffix.lower()
    name = file.name[: -len(suffix)] if suffix in _DECOMPRESS else file.name
    target = root / key.hexdigest()[:16] / name
    if not target.exists():
        data = _decompressed_bytes(file) or b""
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_text(data.decode("utf-8", errors="replace"), encoding="utf-8")
        partial.replace(target)
    return target


# --------------------------------------------------------------------------- documents


def _split_batch(
    batch: dict[str, list[Any]],
    indices: list[int],
    *,
    text_field: str,
    title_field: str,
    id_field: str,
    max_sentence_chars: int,
    max_document_chars: int,
) -> dict[str, list[Any]]:
    """``Dataset.map`` function: raw records -> document records plus bookkeeping columns."""
    texts = batch[text_field]
    titles = batch.get(title_field, [None] * len(texts))
    ids = batch.get(id_field, [None] * len(texts))
    rows = [
        _split_record(t, ti, i, index, max_sentence_chars, max_document_chars)
        for t, ti, i, index in zip(texts, titles, ids, indices, strict=True)
    ]
    return {
        name: [row[name] for row in rows] for name in [*DOCUMENT_FEATURES, *_BOOKKEEPING_FEATURES]
    }


def _split_record(
    text: Any, title: Any, raw_id: Any, index: int, max_sentence_chars: int, max_document_chars: int
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": _document_id(raw_id, index),
        "title": _title(title),
        "paragraphs": [],
        "_skip": _skip_reason(text, max_document_chars),
        "_invalid_utf8": isinstance(text, str) and REPLACEMENT_CHARACTER in text,
        "_sentences": 0,
        "_paragraphs": 0,
        "_characters": 0,
        "_long_sentence_pieces": 0,
    }
    if row["_skip"] is not None:
        return row
    segmented = segment_text(text, max_sentence_chars)
    row["paragraphs"] = [{"heading": h, "sentences": s} for h, s in segmented.paragraphs]
    row["_paragraphs"] = len(segmented.paragraphs)
    row["_sentences"] = sum(len(s) for _, s in segmented.paragraphs)
    row["_characters"] = sum(len(x) for _, s in segmented.paragraphs for x in s)
    row["_long_sentence_pieces"] = segmented.long_sentence_pieces
    if row["_sentences"] == 0:
        row["_skip"] = "no_sentences"
    return row


def _skip_reason(text: Any, max_document_chars: int) -> str | None:
    if text is None:
        return "missing_text"
    if not isinstance(text, str):
        return "non_string_text"
    if not text.strip():
        return "empty_document"
    if len(text) > max_document_chars:
        return "document_too_long"
    return None


def _document_id(raw_id: Any, index: int) -> str:
    """The record's id as a string, or ``doc-<index>`` when it has none."""
    if isinstance(raw_id, float):  # CSV id columns with a gap become float64: 1.0, NaN
        raw_id = None if raw_id != raw_id else int(raw_id) if raw_id.is_integer() else raw_id
    text = "" if raw_id is None else str(raw_id).strip()
    return text or f"doc-{index}"


def _title(raw_title: Any) -> str | None:
    text = "" if raw_title is None else str(raw_title).strip()
    return text or None


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Turn datasets' progress bars off inside the block when ``enabled`` is False."""
    was_enabled = datasets.is_progress_bar_enabled()
    if not enabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def build_documents(
    config: DataConfig, *, num_proc: int | None = None, progress: bool = True
) -> tuple[datasets.Dataset, dict[str, int], dict[str, int]]:
    """Load the corpus and split it into documents: (documents, stats, skipped by reason).

    ``raw_records == documents + sum(skipped.values())`` always holds. The result does not
    depend on ``num_proc`` (default: ``config.num_proc``).
    """
    num_proc = config.num_proc if num_proc is None else num_proc
    with _progress_bars(progress):
        raw = load_raw_corpus(config)
        if config.max_documents is not None:
            raw = raw.select(range(min(config.max_documents, len(raw))))
        split = _map_split(raw, config, num_proc)
        reasons = split["_skip"][:]  # [:] reads the whole column; iterating a Column is slow
        kept = [i for i, reason in enumerate(reasons) if reason is None]
        stats = _stats(split, kept)
        counts = collections.Counter(reason for reason in reasons if reason is not None)
        skipped = {reason: counts[reason] for reason in SKIP_REASONS}
        documents = split.select(kept).select_columns(list(DOCUMENT_FEATURES)).flatten_indices()
        documents, stats["duplicate_ids_renamed"] = _make_ids_unique(documents)
    return documents, stats, skipped


def _map_split(raw: datasets.Dataset, config: DataConfig, num_proc: int) -> datasets.Dataset:
    features = datasets.Features({**DOCUMENT_FEATURES, **_BOOKKEEPING_FEATURES})
    if len(raw) == 0:  # map() on no rows would return the input columns unchanged
        return datasets.Dataset.from_dict({name: [] for name in features}, features=features)
    function = functools.partial(
        _split_batch,
        text_field=config.text_field,
        title_field=config.title_field,
        id_field=config.id_field,
        max_sentence_chars=config.max_sentence_chars,
        max_document_chars=config.max_document_chars,
    )
    return raw.map(
        function,
        batched=True,
        batch_size=64,
        with_indices=True,
        num_proc=num_proc if num_proc > 1 and len(raw) > 1 else None,
        remove_columns=raw.column_names,
        features=features,
        load_from_cache_file=False,  # the function's helpers are not part of its cache key
        desc="Splitting sentences",
    )


def _stats(split: datasets.Dataset, kept: list[int]) -> dict[str, int]:
    table = split.select_columns(list(_BOOKKEEPING_FEATURES)).with_format("arrow")[:]
    kept_rows = table.take(pa.array(kept, type=pa.int64()))

    def total(column: pa.ChunkedArray) -> int:
        return int(pc.sum(column).as_py() or 0)

    return {
        "raw_records": table.num_rows,
        "documents": kept_rows.num_rows,
        "paragraphs": total(kept_rows["_paragraphs"]),
        "sentences": total(kept_rows["_sentences"]),
        "characters": total(kept_rows["_characters"]),
        "one_sentence_documents": total(pc.equal(kept_rows["_sentences"], 1)),
        "long_sentence_pieces": total(kept_rows["_long_sentence_pieces"]),
        # Over all records, kept or skipped: U+FFFD from invalid bytes (or already there).
        "invalid_utf8_documents": total(table["_invalid_utf8"]),
    }


def _make_ids_unique(documents: datasets.Dataset) -> tuple[datasets.Dataset, int]:
    """Rename repeated ids to ``<id>#2``, ``<id>#3``, ... (first one kept); return the count."""
    ids = documents["id"][:]
    taken = set(ids)
    if len(taken) == len(ids):
        return documents, 0
    seen: set[str] = set()
    renamed = 0
    unique = []
    for doc_id in ids:
        if doc_id in seen:
            suffix = 2
            while f"{doc_id}#{suffix}" in taken:
                suffix += 1
            doc_id = f"{doc_id}#{suffix}"
            taken.add(doc_id)
            renamed += 1
        seen.add(doc_id)
        unique.append(doc_id)
    documents = documents.remove_columns("id").add_column("id", unique)
    return documents.select_columns(list(DOCUMENT_FEATURES)).cast(DOCUMENT_FEATURES), renamed


# --------------------------------------------------------------------------- held-out split


def heldout_score(document_id: str, seed: int) -> float:
    """A stable number in [0, 1) from (seed, document id); not Python's salted ``hash``."""
    digest = hashlib.sha256(f"{seed}\x00{document_id}".encode()).digest()
    return struct.unpack(">Q", digest[:8])[0] / 2**64


def split_heldout(
    documents: datasets.Dataset, fraction: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, heldout): a document is held out when its (seed, id) score is below ``fraction``.

    With ``fraction > 0`` and at least 2 documents, at least one document is held out (the
    lowest score); at least one always stays in train (the highest score).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"heldout fraction must be in [0, 1), got {fraction}")
    scores = [heldout_score(doc_id, seed) for doc_id in documents["id"][:]]
    heldout = {i for i, score in enumerate(scores) if score < fraction}
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    if fraction > 0 and len(order) >= 2:
        heldout.add(order[0])
    if order:
        heldout.discard(order[-1])
    train_rows = [i for i in range(len(scores)) if i not in heldout]
    return documents.select(train_rows), documents.select(sorted(heldout))


# --------------------------------------------------------------------------- fingerprint

# DataConfig fields that change the documents (not how they are later cut into examples).
_DOCUMENT_FIELDS = (
    "corpus",
    "format",
    "split",
    "text_field",
    "title_field",
    "id_field",
    "text_sample_by",
    "max_documents",
    "max_sentence_chars",
    "max_document_chars",
)


def corpus_fingerprint(config: DataConfig) -> str:
    """A stable hash of the corpus content identity and the settings that shape documents.

    Local files: paths relative to the corpus plus content hashes (files up to 16 MiB) or
    sizes and modification times; built-ins: name and gensim version; hub names: name and
    split. Also the pysbd version and ``PIPELINE_VERSION``.
    """
    settings = {name: getattr(config, name) for name in _DOCUMENT_FIELDS}
    identity = {
        "source": _source_identity(config),
        "settings": settings,
        "pipeline": PIPELINE_VERSION,
        "pysbd": importlib.metadata.version("pysbd"),
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _source_identity(config: DataConfig) -> Any:
    corpus = config.corpus
    if corpus in BUILTIN_CORPORA:
        return {"builtin": corpus, "version": BUILTIN_CORPORA[corpus].source_version()}
    path = Path(corpus).expanduser()
    if not path.exists():
        return {"hub": corpus, "split": config.split}
    root = path.resolve()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {"path": str(root), "files": [_file_identity(f, root) for f in files]}


def _file_identity(file: Path, root: Path) -> list[Any]:
    stat = file.stat()
    name = file.name if file == root else file.relative_to(root).as_posix()
    if stat.st_size <= _CONTENT_HASH_MAX_BYTES:
        return [name, stat.st_size, hashlib.sha256(file.read_bytes()).hexdigest()]
    return [name, stat.st_size, stat.st_mtime_ns]
