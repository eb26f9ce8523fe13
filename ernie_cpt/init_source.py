"""What a ``model.init_from`` checkpoint directory decides about the run's configuration.

A BERT or ERNIE directory (``config.json`` + weights, usually a tokenizer beside them) fixes
the encoder's shape and the vocabulary. Before the config is built, the raw tree is completed
from it: shape keys the user left out are filled in, shape keys the user set to other values
are refused (all at once), and ``tokenizer.path`` defaults to the checkpoint when it holds a
tokenizer. The resolved ``config.yaml`` and W&B config then describe the model that trains.

Torch-free on purpose: config validation must stay fast.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ernie_cpt.config import ConfigError

# ModelConfig keys that must equal the checkpoint's config.json values.
SHAPE_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "hidden_act",
)
# Training-time settings taken from the checkpoint unless the user sets them.
DEFAULTED_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob")
# Files that make a directory a tokenizer AutoTokenizer can load.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
SUPPORTED_TYPES = ("bert", "ernie")


class InitFromError(ConfigError):
    """An ``init_from`` checkpoint that cannot be used as configured (message for the user)."""


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The checkpoint's ``config.json`` as a dict; refuses non-BERT/ERNIE models."""
    path = Path(path)
    if not path.is_dir():
        raise InitFromError(f"model.init_from {path}: not a directory")
    file = path / "config.json"
    if not file.is_file():
        raise InitFromError(f"model.init_from {path}: no config.json (a BERT/ERNIE checkpoint)")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InitFromError(f"{file}: not valid JSON ({error})") from None
    if not isinstance(raw, dict) or raw.get("model_type") not in SUPPORTED_TYPES:
        kind = raw.get("model_type") if isinstance(raw, dict) else None
        raise InitFromError(
            f"model.init_from {path}: BERT or ERNIE checkpoints are supported, got {kind!r}"
        )
    return raw


def holds_tokenizer(path: str | Path) -> bool:
    """Whether a directory holds a tokenizer (``tokenizer.json`` or a WordPiece ``vocab.txt``)."""
    return any((Path(path) / name).is_file() for name in TOKENIZER_FILES)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def resolve_init_from(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the raw config tree completed from ``model.init_from`` (unchanged without it).

    Raises ``InitFromError`` naming every explicitly set key that contradicts the checkpoint.
    """
    tree = json.loads(json.dumps(dict(tree), default=str))
    model = tree.get("model")
    if not isinstance(model, dict) or not model.get("init_from"):
        return tree
    path = Path(str(model["init_from"]))
    raw = read_checkpoint_config(path)
    problems = [
        f"model.{key}={model[key]!r} (the checkpoint has {raw[key]!r})"
        for key in SHAPE_KEYS
        if key in model and key in raw and not _same(model[key], raw[key])
    ]
    for key in (*SHAPE_KEYS, *DEFAULTED_KEYS):
        if key in raw:
            model.setdefault(key, raw[key])
    tokenizer = tree.get("tokenizer")
    tokenizer = tree["tokenizer"] = dict(tokenizer) if isinstance(tokenizer, dict) else {}
    if tokenizer.get("path") is None:
        if not holds_tokenizer(path):
            problems.append(
                f"tokenizer.path is unset and {path} holds no tokenizer (tokenizer.json or "
                "vocab.txt): a newly trained tokenizer cannot match the checkpoint's embeddings; "
                "set tokenizer.path to the checkpoint's tokenizer"
            )
        tokenizer["path"] = str(path)
    if Path(str(tokenizer["path"])).resolve() == path.resolve() and "vocab_size" in raw:
        if "vocab_size" in tokenizer and not _same(tokenizer["vocab_size"], raw["vocab_size"]):
            problems.append(
                f"tokenizer.vocab_size={tokenizer['vocab_size']!r} (the checkpoint has "
                f"{raw['vocab_size']!r})"
            )
        tokenizer["vocab_size"] = raw["vocab_size"]
    if problems:
        raise InitFromError(
            f"model.init_from {path} contradicts the config: "
            + "; ".join(problems)
            + ". Remove these keys (they are read from the checkpoint) or fix them."
        )
    return tree
