"""Shared fixtures: a tiny tokenizer trained on fixture text, fixture documents, a tiny encoder config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers import (  # noqa: E402, F401  (re-exported for modules that import from conftest)
    FIXTURE_TEXT,
    REPO,
    TINY_CONFIG,
    cli_env,
    fixture_documents,
    run_cli,
    tiny_tree,
)


@pytest.fixture(scope="session")
def tokenizer():
    """An uncased WordPiece tokenizer (vocabulary 300) trained once on the fixture text with
    ``train_wordpiece(texts * 3, TokenizerConfig(vocab_size=300, min_frequency=1))`` and
    committed in tests/fixtures/tokenizer: the `tokenizers` WordPiece trainer breaks ties
    between equally frequent candidates in a different order on every call, so a tokenizer
    trained per session gave different vocabularies, sentence lengths and example counts."""
    from ernie_cpt.data.tokenization import load_tokenizer

    return load_tokenizer(Path(__file__).parent / "fixtures" / "tokenizer")


@pytest.fixture(scope="session")
def documents() -> list:
    """Fixture documents (see ``fixture_documents``)."""
    return fixture_documents()


@pytest.fixture(scope="session")
def corpus_view(documents):
    """A SentencePool over the fixture documents (for "another document" draws)."""
    from ernie_cpt.data.prepare import SentencePool

    sentences, ids = [], []
    for doc in documents:
        for sentence in doc.sentences():
            sentences.append(sentence)
            ids.append(doc.id)
    return SentencePool(sentences, ids)


@pytest.fixture(scope="session")
def encoder_config(tokenizer):
    """A tiny ErnieConfig (hidden 32, 2 layers) matching the fixture tokenizer."""
    from ernie_cpt.config import ModelConfig
    from ernie_cpt.model import encoder_config as build

    model = ModelConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return build(model, len(tokenizer), tokenizer.pad_token_id)


@pytest.fixture(scope="session")
def distributed():
    """A one-process gloo group (DeepSpeed's CPU path); returns the deepspeed module."""
    import deepspeed

    from ernie_cpt.training.engine import init_distributed

    init_distributed()
    return deepspeed


# ------------------------------------------------------------------ end-to-end fixtures
@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared-data cache for every end-to-end test of the session."""
    return tmp_path_factory.mktemp("ernie-cache")


@pytest.fixture()
def tiny_config(tmp_path: Path, cache_dir: Path):
    """Write the tiny config (with nested overrides) to a YAML file; returns its path."""
    import yaml

    def write(**sections) -> Path:
        tree = tiny_tree(**sections)
        tree["data"].setdefault("cache_dir", str(cache_dir))
        path = tmp_path / f"config-{len(list(tmp_path.glob('config-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(tree))
        return path

    return write


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.gpu`` tests on a machine without CUDA (they run where it is present)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in gpu_items:
        item.add_marker(skip)
