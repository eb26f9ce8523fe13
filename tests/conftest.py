"""Shared fixtures: a tiny tokenizer trained on fixture text, fixture documents, a tiny encoder config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from ernie_cpt.config import TokenizerConfig  # noqa: E402
from pretrain_tasks.document import Document, Paragraph  # noqa: E402

FIXTURE_TEXT = [
    (
        "Ada Lovelace",
        "Early life",
        [
            "Ada Lovelace was born in London in 1815.",
            "She was the daughter of Lord Byron and Anne Isabella Milbanke.",
            "However, her parents separated soon after her birth.",
            "Her mother encouraged her interest in mathematics and logic.",
        ],
    ),
    (
        "Ada Lovelace",
        "Work",
        [
            "Lovelace worked with Charles Babbage on the Analytical Engine.",
            "For example, she wrote an algorithm to compute Bernoulli numbers.",
            "Many consider it the first computer program.",
        ],
    ),
    (
        "Paris",
        "Geography",
        [
            "Paris is the capital and largest city of France.",
            "The Seine river flows through the centre of the city.",
            "Therefore, many bridges cross the river in Paris.",
            "The city has a population of over two million people.",
        ],
    ),
    (
        "Paris",
        "History",
        [
            "The Eiffel Tower was built for the World Fair of 1889.",
            "In addition, the Louvre became a public museum in 1793.",
        ],
    ),
    (
        "Machine learning",
        "Overview",
        [
            "Machine learning is a field of artificial intelligence.",
            "Neural networks learn representations from data.",
            "As a result, large models need large amounts of text.",
            "Because training is expensive, researchers share pre-trained models.",
            "The New York Times reported on deep learning in 2012.",
        ],
    ),
]


def fixture_documents() -> list[Document]:
    """Three documents (titles, headed paragraphs), one one-sentence document, one empty one."""
    by_title: dict[str, list[Paragraph]] = {}
    for title, heading, sentences in FIXTURE_TEXT:
        by_title.setdefault(title, []).append(Paragraph(tuple(sentences), heading))
    docs = [
        Document(f"doc-{i}", title, tuple(ps)) for i, (title, ps) in enumerate(by_title.items())
    ]
    docs.append(Document("doc-single", "Single", (Paragraph(("Only one sentence is here.",)),)))
    docs.append(Document("doc-empty", None, ()))
    return docs


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """An uncased WordPiece tokenizer trained on the fixture text (vocabulary ~300)."""
    from ernie_cpt.data.tokenization import load_tokenizer, train_wordpiece

    texts = [s for _, _, sentences in FIXTURE_TEXT for s in sentences] * 3
    out = tmp_path_factory.mktemp("tokenizer")
    train_wordpiece(texts, TokenizerConfig(vocab_size=300, min_frequency=1), Path(out))
    return load_tokenizer(out)


@pytest.fixture(scope="session")
def documents() -> list[Document]:
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


# ------------------------------------------------------------------ end-to-end helpers
REPO = Path(__file__).resolve().parents[1]

TINY_CONFIG = {
    "model": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    },
    "tokenizer": {"vocab_size": 600},
    "data": {
        "corpus": "builtin:wikipedia-sample",
        "max_documents": 12,
        "max_seq_length": 64,
        "num_proc": 1,
    },
    "tasks": {"mlm": {}, "sentence_distance": {}},
    # cmtl, 2 tasks x 12: stage 1 = mlm 8 steps; stage 2 = mlm 4 + sentence_distance 12 (24 steps)
    "schedule": {"kind": "cmtl", "iterations_per_task": 12},
    "train": {
        "micro_batch_size": 4,
        "lr": 1e-3,
        "warmup_steps": 2,
        "checkpoint_every": 5,
        "eval_batches": 2,
    },
    "logging": {"wandb_mode": "offline", "progress_bar": False},
}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared-data cache for every end-to-end test of the session."""
    return tmp_path_factory.mktemp("ernie-cache")


@pytest.fixture()
def tiny_config(tmp_path: Path, cache_dir: Path):
    """Write the tiny config (with nested overrides) to a YAML file; returns its path."""
    import copy

    import yaml

    def write(**sections) -> Path:
        tree = copy.deepcopy(TINY_CONFIG)
        tree["data"]["cache_dir"] = str(cache_dir)
        for section, values in sections.items():
            if isinstance(values, dict) and section != "tasks":
                tree.setdefault(section, {}).update(values)
            else:
                tree[section] = values
        path = tmp_path / f"config-{len(list(tmp_path.glob('config-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(tree))
        return path

    return write


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for CLI subprocesses: offline, persistent extension cache, no secrets."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))
    }
    env.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline", PYTHONUNBUFFERED="1"
    )
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 600, check: bool = True):
    """Run ``python -m ernie_cpt.cli ARGS``; returns the CompletedProcess."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "ernie_cpt.cli", *args],
        cwd=REPO,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"ernie-cpt {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )
    return result
