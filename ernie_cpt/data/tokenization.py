"""Tokenizers: a local Hugging Face fast tokenizer, or an uncased WordPiece trained on the corpus.

Trained tokenizers are cached under ``<cache>/tokenizers/<fingerprint>`` (fingerprint of the
corpus and the tokenizer settings) and written atomically, so a second run reuses them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ernie_cpt.config import TokenizerConfig
from ernie_cpt.errors import InputError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ckpt")


def tokenizer_fingerprint(config: TokenizerConfig, corpus_fingerprint: str) -> str:
    """Identity of the tokenizer a config yields on a corpus."""
    if config.path is not None:
        # Weights beside a tokenizer (an init_from checkpoint directory) are not part of it.
        files = sorted(
            p
            for p in Path(config.path).iterdir()
            if p.is_file() and p.suffix not in WEIGHT_SUFFIXES
        )
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.name.encode())
            digest.update(hashlib.sha256(f.read_bytes()).digest())
        return "local-" + digest.hexdigest()[:16]
    payload = {"settings": asdict(config), "corpus": corpus_fingerprint, "version": 2}
    text = json.dumps(payload, sort_keys=True)
    return "wordpiece-" + hashlib.sha256(text.encode()).hexdigest()[:16]


# A directory holding none of these is not a tokenizer (transformers would then ask to
# install sentencepiece or tiktoken, which does not help).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def check_tokenizer_dir(path: str | Path) -> None:
    """A one-line error naming ``path`` when it is not a local tokenizer directory."""
    from ernie_cpt.data.corpus import DataError

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"tokenizer.path {str(path)!r}: no such directory")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise DataError(
            f"tokenizer.path {str(path)!r} is not a tokenizer directory "
            f"(it holds none of {', '.join(TOKENIZER_FILES)})"
        )


def load_tokenizer(path: str | Path) -> Any:
    """Load a local fast tokenizer directory (never remote code); refuse slow tokenizers."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        str(path), trust_remote_code=False, local_files_only=True
    )
    if not tokenizer.is_fast:
        raise InputError(f"{path}: a fast tokenizer is required (offset mappings, word ids)")
    for token in ("cls_token", "sep_token", "pad_token", "mask_token"):
        if getattr(tokenizer, token) is None:
            raise InputError(
                f"{path}: the tokenizer has no {token}; BERT-style specials are needed"
            )
    return tokenizer


def canonical_wordpiece(vocab: dict[str, int]) -> Any:
    """The same vocabulary with ids in a fixed order: specials, then tokens sorted.

    The ``tokenizers`` trainer numbers tokens in hash-map order, which differs from run to run
    (the token set normally does not); WordPiece splits words by the token set alone, so
    renumbering makes the ids reproducible. The trainer still breaks frequency ties at the
    vocabulary cap in hash order, so on small corpora the set itself can differ between
    machines: for bit-for-bit reproducible runs elsewhere, pin ``tokenizer.path`` to the
    tokenizer a run saved (``<run>/tokenizer``).
    """
    from tokenizers.models import WordPiece

    ordered = SPECIAL_TOKENS + sorted(t for t in vocab if t not in SPECIAL_TOKENS)
    return WordPiece(
        vocab={t: i for i, t in enumerate(ordered)},
        unk_token="[UNK]",
        continuing_subword_prefix="##",
    )


def train_wordpiece(texts: Iterable[str], config: TokenizerConfig, out_dir: Path) -> Any:
    """Train a BERT-style WordPiece tokenizer and save it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from tokenizers.trainers import WordPieceTrainer
    from transformers import BertTokenizerFast

    tokenizer = Tokenizer(WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=config.lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = WordPieceTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=SPECIAL_TOKENS,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.model = canonical_wordpiece(tokenizer.get_vocab())
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = BertTokenizerFast(tokenizer_object=tokenizer, do_lower_case=config.lowercase)
    fast.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    fast.save_pretrained(str(out_dir))
    return fast


def load_or_train_tokenizer(
    config: TokenizerConfig,
    texts: Iterable[str] | Iterator[str],
    cache_dir: Path,
    corpus_fingerprint: str,
) -> tuple[Any, str]:
    """Return (tokenizer, fingerprint): the local one, the cached one, or a newly trained one."""
    if config.path is not None:
        check_tokenizer_dir(config.path)
    fingerprint = tokenizer_fingerprint(config, corpus_fingerprint)
    if config.path is not None:
        return load_tokenizer(config.path), fingerprint
    target = Path(cache_dir) / "tokenizers" / fingerprint
    if not (target / "tokenizer.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        try:
            train_wordpiece(texts, config, tmp)
            os.replace(tmp, target) if not target.exists() else shutil.rmtree(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer(target), fingerprint
