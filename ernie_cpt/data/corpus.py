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

JSON Lines (and JSON arrays) are read here, line by line, not by pyarrow's JSON reader (one
bad line there refuses the whole file, and a deeply nested value crashes it): a line that is
not valid JSON is skipped as ``invalid_json``, one that is not an object as
``not_an_object``, one nested deeper than Python's parser allows as ``too_deeply_nested``,
and one whose text is present but not a string as ``non_string_text``; their
``file:line`` locations (the first ``BAD_LINE_EXAMPLES`` per reason) go to
``data_report.json`` under ``documents.bad_lines``. Invalid UTF-8 is replaced (U+FFFD) and
counted. A JSON array is parsed element by element from a bounded buffer (never the whole
file); an element that does not parse ends it, the elements before it are kept. The rows
are written once, in batches of bounded size, to an Arrow file that is memory-mapped from
then on.
Plain-text files read one document per file get the file name (without suffixes,
underscores as spaces) as title.

``build_documents`` applies, per record, in order: text missing -> skip ``missing_text``;
not a string -> ``non_string_text``; empty or whitespace only -> ``empty_document``; longer
than ``max_document_chars`` -> ``document_too_long``; then ``segmentation.segment_text``
(paragraph, heading and sentence rules are documented there); no sentence left ->
``no_sentences``. Every record is either kept or counted under one reason.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import dataclasses
import functools
import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import lzma
import os
import re
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ernie_cpt.config import ConfigError, DataConfig, did_you_mean
from ernie_cpt.data.mapped_pages import keep_arrow_pages_released
from ernie_cpt.data.segmentation import SENTENCE_SPLITTERS, segment_text

# The data-format version: bump when the reading/cleaning/splitting rules change, so cached
# documents (and everything prepared from them) are rebuilt. 2: sentencex, own JSON reader.
PIPELINE_VERSION = 2


class DataError(ConfigError):
    """A problem with the user's data (corpus, tokenizer directory, empty tasks)."""


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
# Reasons found while reading JSON lines, before documents are built.
LINE_SKIP_REASONS = ("invalid_json", "not_an_object", "too_deeply_nested")
BAD_LINE_EXAMPLES = 100
SKIP_REASONS = (
    *LINE_SKIP_REASONS,
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
        raise DataError("builtin:wikipedia-sample needs the gensim package (pip install gensim)")
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


@dataclass
class BadLines:
    """Input lines skipped before any document is built: counts and ``file:line`` examples."""

    counts: dict[str, int]
    locations: dict[str, list[str]]
    # JSON only: the keys records held (first 100 seen), to name them when the text is missing.
    columns: list[str] | None = None

    @classmethod
    def none(cls) -> BadLines:
        """No bad line."""
        return cls({reason: 0 for reason in LINE_SKIP_REASONS}, {})

    def add(self, reason: str, location: str) -> None:
        """Count one bad line (and keep its location among the first few)."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        kept = self.locations.setdefault(reason, [])
        if len(kept) < BAD_LINE_EXAMPLES:
            kept.append(location)


def load_raw_corpus(config: DataConfig) -> datasets.Dataset:
    """Read ``config.corpus`` into a ``datasets.Dataset`` of raw records (see module doc)."""
    return read_raw_corpus(config)[0]


def read_raw_corpus(config: DataConfig) -> tuple[datasets.Dataset, BadLines]:
    """The raw records and the input lines skipped while reading them."""
    corpus = config.corpus
    bad = BadLines.none()
    if corpus.startswith("builtin:"):
        dataset = _load_builtin(corpus)
    elif Path(corpus).expanduser().exists():
        dataset, bad = _load_local(Path(corpus).expanduser(), config)
    elif _looks_like_path(corpus):
        raise DataError(f"corpus {corpus!r}: no such file or folder")
    else:
        dataset = _load_hub(corpus, config.split, _datasets_cache_dir(config))
    _check_text_field(dataset, config)
    return dataset, bad


def _load_builtin(name: str) -> datasets.Dataset:
    if name not in BUILTIN_CORPORA:
        raise DataError(
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
        raise DataError(
            f"corpus {name!r}: no local file or folder of that name exists, and loading it "
            f"as a Hugging Face hub dataset (split {split!r}) failed: {error}"
        ) from error
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(f"corpus {name!r}: expected one split, got {type(dataset).__name__}")
    return dataset


def _check_text_field(dataset: datasets.Dataset, config: DataConfig) -> None:
    if config.text_field not in dataset.column_names:
        columns = ", ".join(dataset.column_names) or "none"
        raise DataError(
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


def _load_local(path: Path, config: DataConfig) -> tuple[datasets.Dataset, BadLines]:
    if is_saved_dataset(path):
        return _load_saved(path, config), BadLines.none()
    files, builder = corpus_files(path, config.format)
    cache_dir = _datasets_cache_dir(config)
    if builder == "text":
        return _load_text(files, path, config), BadLines.none()
    if builder == "json":
        if all(_can_stream(f) for f in files):
            return read_json_records(files, path, config)
        return _load_json(files, cache_dir), BadLines.none()  # .zst: datasets' reader
    kwargs = {"encoding_errors": "replace"} if builder == "csv" else {}
    return _load_files(builder, files, cache_dir=cache_dir, **kwargs), BadLines.none()


def _load_saved(path: Path, config: DataConfig) -> datasets.Dataset:
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if config.split not in loaded:
            raise DataError(
                f"corpus {config.corpus!r} has no split {config.split!r} (data.split)"
                f"{did_you_mean(config.split, loaded)}; available splits: {', '.join(loaded)}"
            )
        loaded = loaded[config.split]
    return loaded


def corpus_files(path: Path, format: str | None = None) -> tuple[list[Path], str]:
    """The data files of a local corpus (sorted) and the ``datasets`` builder that reads them."""
    if format is not None and format not in FORMATS:
        raise DataError(
            f"unknown data.format {format!r}{did_you_mean(format, FORMATS)}; use one of {FORMATS}"
        )
    if path.is_file():
        builder = format or _suffix_format(path)
        if builder is None:
            raise DataError(
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
        raise DataError(
            f"corpus folder {str(folder)!r} holds no data files (looked for "
            f"{', '.join(FORMAT_SUFFIXES)}, optionally compressed, in all subfolders)"
        )
    if len(known) > 1:
        counts = ", ".join(f"{len(files)} {name}" for name, files in sorted(known.items()))
        raise DataError(
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
        raise DataError(
            f"datasets' {builder!r} reader could not read {names}{empty}: "
            f"{type(error).__name__}: {error}"
        ) from error


def _load_text(files: list[Path], root: Path, config: DataConfig) -> datasets.Dataset:
    if config.text_sample_by not in SAMPLE_BY:
        raise DataError(
            f"unknown data.text_sample_by {config.text_sample_by!r}"
            f"{did_you_mean(config.text_sample_by, SAMPLE_BY)}; use one of {SAMPLE_BY}"
        )
    limit = config.max_document_chars
    if config.text_sample_by == "document":
        # A UTF-8 character is at most 4 bytes: such files cannot fit in one document, and
        # datasets' reader would hold each whole in memory only for it to be skipped.
        sizes = [f.stat().st_size for f in files]
        if sizes and all(size > 4 * limit for size in sizes):
            more = " and more" if len(files) > 1 else ""
            raise DataError(
                f"{files[0]} ({sizes[0] / 2**20:.0f} MB{more}) cannot be one document"
                f" (data.text_sample_by: document; data.max_document_chars: "
                f"{limit:,}): for documents separated by blank lines (the BERT format) set "
                f"data.text_sample_by: paragraph, or one per line: line"
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
        # One row per file, in file order: the relative path is a stable id, the file name
        # (suffixes off, underscores as spaces) the title.
        names = [f.name if root.is_file() else f.relative_to(root).as_posix() for f in files]
        dataset = dataset.add_column(config.id_field, names)
        if config.title_field not in dataset.column_names:
            titles = [" ".join(f.name.split(".")[0].replace("_", " ").split()) for f in files]
            dataset = dataset.add_column(config.title_field, titles)
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


_OPENERS: dict[str, Callable[[Path], Any]] = {
    ".gz": gzip.open,
    ".bz2": bz2.open,
    ".xz": lzma.open,
}
# Rows are written to Arrow in batches of at most this many rows and about this many
# bytes of text, so the buffer stays bounded however long the documents are.
_RECORD_BATCH_ROWS = 4096
_RECORD_BATCH_BYTES = 8 << 20
# Bump when read_json_records changes what it writes.
_JSON_READER_VERSION = 2


def _can_stream(file: Path) -> bool:
    """Whether the file is plain or compressed in a way the standard library reads."""
    suffix = file.suffix.lower()
    return suffix not in COMPRESSION_SUFFIXES or suffix in _OPENERS


def _open_binary(file: Path) -> Any:
    """The file's (decompressed) bytes as a binary stream, decompressing as it is read."""
    return _OPENERS.get(file.suffix.lower(), Path.open)(file, "rb")


def read_json_records(
    files: list[Path], root: Path, config: DataConfig
) -> tuple[datasets.Dataset, BadLines]:
    """JSON Lines (or JSON array) files -> a memory-mapped Arrow dataset of id/title/text.

    Written once per (files, fields) identity under datasets' cache, with the bad-line
    report beside it; see the module doc for what is skipped.
    """
    fields = (config.id_field, config.title_field, config.text_field)
    limit = config.max_documents
    identity = [_JSON_READER_VERSION, fields, limit] + [
        [str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files
    ]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    cache = Path(_datasets_cache_dir(config) or datasets.config.HF_DATASETS_CACHE)
    target = cache / "ernie_cpt_json" / key
    if not (target / "bad_lines.json").exists():
        tmp = target.with_name(f".tmp-{key}-{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        bad = _write_json_records(files, root, fields, tmp / "records.arrow", limit)
        (tmp / "bad_lines.json").write_text(json.dumps(dataclasses.asdict(bad)))
        if target.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    bad = BadLines(**json.loads((target / "bad_lines.json").read_text()))
    dataset = datasets.Dataset.from_file(str(target / "records.arrow"))
    names = ", ".join(str(f) for f in files[:3]) + (", ..." if len(files) > 3 else "")
    if dataset.num_rows == 0 and sum(bad.counts.values()) == 0 and limit != 0:
        empty = " (the files are empty)" if all(f.stat().st_size == 0 for f in files) else ""
        raise DataError(f"corpus {names}{empty}: no JSON records")
    if bad.columns is not None and config.text_field not in bad.columns and dataset.num_rows:
        raise DataError(
            f"corpus {config.corpus!r} has no column {config.text_field!r} (data.text_field)"
            f"{did_you_mean(config.text_field, bad.columns)}; "
            f"available columns: {', '.join(bad.columns) or 'none'}"
        )
    return dataset, bad


def _write_json_records(
    files: list[Path], root: Path, fields: tuple[str, str, str], out: Path, limit: int | None
) -> BadLines:
    """Stream every file's records into one Arrow file (string columns named by ``fields``).

    Stops after ``limit`` records (``data.max_documents``), bad lines included.
    """
    schema = pa.schema([(name, pa.string()) for name in dict.fromkeys(fields)])
    bad = BadLines.none()
    bad.columns = []
    rows: list[dict[str, str | None]] = []
    buffered = 0
    records = 0
    with pa.OSFile(str(out), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for file in files:
            name = file.name if file == root else file.relative_to(root).as_posix()
            for number, value in _json_values(file):
                if limit is not None and records >= limit:
                    break
                records += 1
                row = _json_row(value, fields, bad, f"{name}:{number}")
                if row is not None:
                    rows.append(row)
                    buffered += sum(len(v) for v in row.values() if v is not None)
                if len(rows) >= _RECORD_BATCH_ROWS or buffered >= _RECORD_BATCH_BYTES:
                    writer.write_batch(pa.RecordBatch.from_pylist(rows, schema=schema))
                    rows.clear()
                    buffered = 0
        if rows:
            writer.write_batch(pa.RecordBatch.from_pylist(rows, schema=schema))
    return bad


_NOT_JSON = object()


def _json_values(file: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) per non-blank line; ``_NOT_JSON`` or a RecursionError
    instance for lines that do not parse. A file starting with ``[`` is one JSON array
    (its elements are numbered from 1)."""
    with _open_binary(file) as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        with _open_binary(file) as handle:
            yield from enumerate(_json_array_values(handle), 1)
        return
    with _open_binary(file) as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield number, _parse(line)


_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
_JSON_NUMBER_TAIL = re.compile(r"[0-9.eE+-]*")
_ARRAY_CHUNK = 1 << 20


def _json_array_values(handle: Any) -> Iterator[Any]:
    """The elements of the JSON array in a binary stream, parsed one at a time.

    The buffer holds about one chunk (or one element, if longer), never the whole file.
    An element that does not parse ends the array: it and the rest of the file are one
    ``_NOT_JSON`` (or the RecursionError), since the next element cannot be found reliably.
    """
    return iter(_JsonArrayReader(handle))


class _JsonArrayReader:
    """A JSON array read from a binary stream through a bounded text buffer."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.decoder = json.JSONDecoder()
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.buffer, self.pos, self.eof = "", 0, False

    def more(self, size: int = _ARRAY_CHUNK) -> None:
        """Read up to ``size`` more bytes, dropping what was consumed."""
        data = self.handle.read(size)
        self.eof = not data
        self.buffer = self.buffer[self.pos :] + self.utf8.decode(data, final=self.eof)
        self.pos = 0

    def next_char(self) -> str:
        """Skip blanks; the next character ("" at the end of the file)."""
        while True:
            self.pos = _JSON_WHITESPACE.match(self.buffer, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buffer) or self.eof:
                return self.buffer[self.pos : self.pos + 1]
            self.more()

    def value(self) -> Any:
        """The value at the position; an element cut by the chunk end is read further
        (doubling) and parsed again, and so is a number that may go on."""
        size = _ARRAY_CHUNK
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buffer, self.pos)
                tail = _JSON_NUMBER_TAIL.match(self.buffer, end).end()  # type: ignore[union-attr]
                if self.eof or not (isinstance(value, (int, float)) and tail == len(self.buffer)):
                    self.pos = end
                    return value
            except json.JSONDecodeError:
                if self.eof:
                    return _NOT_JSON
            except RecursionError as error:
                return error
            self.more(size)
            size *= 2

    def __iter__(self) -> Iterator[Any]:
        while not self.buffer and not self.eof:
            self.more()
        self.pos = 1 if self.buffer.startswith("\ufeff") else 0
        self.next_char()
        self.pos += 1  # the "[" (the caller checked it)
        if self.next_char() == "]":
            return
        while True:
            self.next_char()  # raw_decode does not skip leading blanks
            value = self.value()
            yield value
            if value is _NOT_JSON or isinstance(value, RecursionError):
                return
            after = self.next_char()
            self.pos += 1
            if after == ",":
                continue
            if after != "]" or self.next_char():  # no "]", or something after it
                yield _NOT_JSON
            return


def _parse(data: bytes) -> Any:
    """A JSON value; invalid UTF-8 replaced; unparsable -> ``_NOT_JSON``; too deep -> the error."""
    try:
        return json.loads(data.decode("utf-8", errors="replace").lstrip("\ufeff"))
    except RecursionError as error:  # Python's parser refuses deep nesting; pyarrow crashes
        return error
    except ValueError:
        return _NOT_JSON


def _json_row(
    value: Any, fields: tuple[str, str, str], bad: BadLines, location: str
) -> dict[str, str | None] | None:
    """The id/title/text row of one parsed line, or None (counted in ``bad``)."""
    id_field, title_field, text_field = fields
    if value is _NOT_JSON:
        bad.add("invalid_json", location)
    elif isinstance(value, RecursionError):
        bad.add("too_deeply_nested", location)
    elif not isinstance(value, dict):
        bad.add("not_an_object", location)
    else:
        columns = bad.columns if bad.columns is not None else []
        columns.extend(k for k in value if k not in columns and len(columns) < 100)
        if value.get(text_field) is not None and not isinstance(value[text_field], str):
            bad.add("non_string_text", location)
            return None
        return {
            id_field: _scalar_text(value.get(id_field)),
            title_field: _scalar_text(value.get(title_field)),
            text_field: value.get(text_field),
        }
    return None


def _scalar_text(value: Any) -> str | None:
    """An id or title as text (1.0 -> "1"); None when missing."""
    if value is None or isinstance(value, float) and value != value:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else json.dumps(value)


def _decompressed_bytes(file: Path) -> bytes | None:
    """The file's bytes, decompressed by suffix; None for a compression we cannot undo here."""
    suffix = file.suffix.lower()
    if suffix in COMPRESSION_SUFFIXES and suffix not in _DECOMPRESS:
        return None
    return _DECOMPRESS.get(suffix, lambda data: data)(file.read_bytes())


def _is_valid_utf8(file: Path) -> bool:
    """Whether the (decompressed) file decodes as UTF-8, read in 1 MiB blocks (also when
    compressed: memory stays flat). Files we cannot decompress count as valid."""
    if not _can_stream(file):
        return True
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with _open_binary(file) as handle:
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
    splitter: str,
) -> dict[str, list[Any]]:
    """``Dataset.map`` function: raw records -> document records plus bookkeeping columns."""
    keep_arrow_pages_released()  # in this (possibly forked worker) process too
    texts = batch[text_field]
    titles = batch.get(title_field, [None] * len(texts))
    ids = batch.get(id_field, [None] * len(texts))
    rows = [
        _split_record(t, ti, i, index, max_sentence_chars, max_document_chars, splitter)
        for t, ti, i, index in zip(texts, titles, ids, indices, strict=True)
    ]
    return {
        name: [row[name] for row in rows] for name in [*DOCUMENT_FEATURES, *_BOOKKEEPING_FEATURES]
    }


def _split_record(
    text: Any,
    title: Any,
    raw_id: Any,
    index: int,
    max_sentence_chars: int,
    max_document_chars: int,
    splitter: str,
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
    segmented = segment_text(text, max_sentence_chars, splitter)
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
    config: DataConfig,
    *,
    num_proc: int | None = None,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
) -> tuple[datasets.Dataset, dict[str, Any], dict[str, int]]:
    """Load the corpus and split it into documents: (documents, stats, skipped by reason).

    ``raw_records == documents + sum(skipped.values())`` always holds. The result does not
    depend on ``num_proc`` (default: ``config.num_proc``). ``shard=(i, N)`` keeps raw
    records i, i+N, i+2N, ... (bad lines are counted in shard 0 only).
    """
    num_proc = config.num_proc if num_proc is None else num_proc
    if config.sentence_splitter not in SENTENCE_SPLITTERS:
        raise DataError(
            f"unknown data.sentence_splitter {config.sentence_splitter!r}"
            f"{did_you_mean(config.sentence_splitter, SENTENCE_SPLITTERS)}; "
            f"use one of {SENTENCE_SPLITTERS}"
        )
    with _progress_bars(progress):
        raw, bad = read_raw_corpus(config)
        if config.max_documents is not None:
            raw = raw.select(range(min(config.max_documents, len(raw))))
        if shard is not None:
            raw = raw.select(range(shard[0], len(raw), shard[1]))
            bad = bad if shard[0] == 0 else BadLines.none()
        split = _map_split(raw, config, num_proc)
        # Column arithmetic on the (memory-mapped) Arrow table: no Python list per record.
        reasons = split.data.column("_skip")
        kept_mask = pc.is_null(reasons)
        stats = _stats(split, kept_mask)
        counts = {
            entry["values"]: entry["counts"] for entry in pc.value_counts(reasons).to_pylist()
        }
        skipped = {
            reason: counts.get(reason, 0) + bad.counts.get(reason, 0) for reason in SKIP_REASONS
        }
        stats["raw_records"] += sum(bad.counts.values())
        if bad.locations:
            stats["bad_lines"] = {r: where for r, where in bad.locations.items() if where}
        kept = np.flatnonzero(kept_mask.to_numpy(zero_copy_only=False))
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
        splitter=config.sentence_splitter,
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


def _stats(split: datasets.Dataset, kept: pa.ChunkedArray) -> dict[str, Any]:
    table = split.data

    def total(column: pa.ChunkedArray | pa.Array) -> int:
        return int(pc.sum(column).as_py() or 0)

    def kept_total(name: str) -> int:
        return total(pc.filter(table.column(name), kept))

    sentences = pc.filter(table.column("_sentences"), kept)
    return {
        "raw_records": table.num_rows,
        "documents": total(pc.cast(kept, pa.int64())),
        "paragraphs": kept_total("_paragraphs"),
        "sentences": total(sentences),
        "characters": kept_total("_characters"),
        "one_sentence_documents": total(pc.cast(pc.equal(sentences, 1), pa.int64())),
        "long_sentence_pieces": kept_total("_long_sentence_pieces"),
        # Over all records, kept or skipped: U+FFFD from invalid bytes (or already there).
        "invalid_utf8_documents": total(pc.cast(table.column("_invalid_utf8"), pa.int64())),
    }


def _make_ids_unique(documents: datasets.Dataset) -> tuple[datasets.Dataset, int]:
    """Rename repeated ids to ``<id>#2``, ``<id>#3``, ... (first one kept); return the count."""
    column = documents.data.column("id")
    if pc.count_distinct(column).as_py() == documents.num_rows:
        return documents, 0
    ids = column.to_pylist()
    taken = set(ids)
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
    "sentence_splitter",
)


def corpus_fingerprint(config: DataConfig) -> str:
    """A stable hash of the corpus content identity and the settings that shape documents.

    Local files: paths relative to the corpus plus content hashes (files up to 16 MiB) or
    sizes and modification times; built-ins: name and gensim version; hub names: name and
    split. Also the sentence splitter's version and ``PIPELINE_VERSION``.
    """
    settings = {name: getattr(config, name) for name in _DOCUMENT_FIELDS}
    identity = {
        "source": _source_identity(config),
        "settings": settings,
        "pipeline": PIPELINE_VERSION,
        "splitter": importlib.metadata.version(config.sentence_splitter),
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
