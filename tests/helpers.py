"""Plain helpers shared by test modules (no fixtures): fixture text, the tiny CLI config, runners.

Test modules import from here, never from each other; ``conftest.py`` re-exports the names it
always exported so older imports keep working.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

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


def fixture_documents() -> list:
    """Three documents (titles, headed paragraphs), one one-sentence document, one empty one."""
    from pretrain_tasks.document import Document, Paragraph

    by_title: dict[str, list[Paragraph]] = {}
    for title, heading, sentences in FIXTURE_TEXT:
        by_title.setdefault(title, []).append(Paragraph(tuple(sentences), heading))
    docs = [
        Document(f"doc-{i}", title, tuple(ps)) for i, (title, ps) in enumerate(by_title.items())
    ]
    docs.append(Document("doc-single", "Single", (Paragraph(("Only one sentence is here.",)),)))
    docs.append(Document("doc-empty", None, ()))
    return docs


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


def tiny_tree(**sections) -> dict:
    """A deep copy of TINY_CONFIG with sections merged in (``tasks`` and non-dicts replaced)."""
    tree = json.loads(json.dumps(TINY_CONFIG))
    for section, values in sections.items():
        if isinstance(values, dict) and section != "tasks":
            tree.setdefault(section, {}).update(values)
        else:
            tree[section] = values
    return tree


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


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: int = 600, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``python -m ernie_cpt.cli ARGS``; returns the CompletedProcess."""
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


def metrics(run_dir: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def evals(run_dir: Path) -> list[dict]:
    """The rows of a run's eval.jsonl."""
    return [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]


def losses_by_step(run_dir: Path) -> dict[int, dict[str, float]]:
    """step -> {task: loss} of a run."""
    return {row["step"]: row["losses"] for row in metrics(run_dir)}


GENSIM_DATA = Path(__import__("gensim").__file__).parent / "test" / "test_data"


def polarity_tsv(path: Path, limit: int = 200) -> Path:
    """gensim's 200-sentence movie-review polarity set as a GLUE-style TSV (sentence, label)."""
    lines = (GENSIM_DATA / "pang_lee_polarity.cor").read_text(encoding="latin-1").splitlines()
    rows = ["sentence\tlabel"]
    for line in lines[:limit]:
        label, text = line.split(" ", 1)
        rows.append(f"{text.strip()}\t{label.removeprefix('__label__')}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path
