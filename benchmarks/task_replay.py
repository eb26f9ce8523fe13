"""Each task's ``build_examples`` CPU time on captured preparation batches, in one process.

Prepares a corpus once (untimed; the built-in Wikipedia sample written ``--copies`` times
with new document ids, as ``prepare_throughput.py`` does; one worker; all eight tasks or
``--tasks``), capturing the arguments of every ``build_batch`` call of the training split.
Then replays those calls ``--rounds`` times, timing each task's ``build_examples`` (CPU
seconds), and prints each task's fastest round and the total, and a sha256 digest of every
example column the calls return (not the CPU-seconds column). Between whole runs of
``ernie-cpt prepare`` this machine drifts by ~20%, more than most single changes move
preparation; replaying the same calls in one process, alternately from two checkouts,
compares a change's speed with less noise and shows that its output is byte-identical:

    git worktree add /tmp/before <commit>
    for i in 1 2 3; do
        (cd /tmp/before && python /path/to/ernie-cpt/benchmarks/task_replay.py)
        python benchmarks/task_replay.py
    done

(the file is imported from the working directory's checkout: ``ROOT`` is the current
directory when it has ``ernie_cpt/``, else this file's parent's parent). Never a test.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prepare_throughput import ALL_TASKS  # a script's own folder is first on sys.path

ROOT = Path.cwd() if (Path.cwd() / "ernie_cpt").is_dir() else Path(__file__).resolve().parents[1]


def capture(work: Path, copies: int, tasks: list[str]) -> list[tuple[Any, ...]]:
    """Prepare the corpus once, returning the arguments of the training split's
    ``build_batch`` calls (every batch copied to plain lists)."""
    sys.path.insert(0, str(ROOT))
    from ernie_cpt.config import config_from_dict
    from ernie_cpt.data import prepare
    from ernie_cpt.data.corpus import load_wikipedia_sample

    corpus = work / "corpus.jsonl"
    with corpus.open("w", encoding="utf-8") as handle:
        for copy in range(copies):
            for record in load_wikipedia_sample():
                row = {**record, "id": f"{record['id']}-copy{copy}"}
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    config = config_from_dict(
        {
            "tokenizer": {"vocab_size": 8000},
            "data": {"corpus": str(corpus), "heldout_fraction": 0.1, "num_proc": 1},
            "tasks": {name: {} for name in tasks},
        }
    )
    calls: list[tuple[Any, ...]] = []
    original = prepare.build_batch

    def recording(batch: Any, tasks: Any, corpus: Any, seed: int, columns: Any) -> Any:
        if corpus.split == "train":
            calls.append(({k: list(v) for k, v in batch.items()}, tasks, corpus, seed, columns))
        return original(batch, tasks, corpus, seed, columns)

    prepare.build_batch = recording
    try:
        prepare.prepare_data(config, cache_dir=work / "cache", progress=False)
    finally:
        prepare.build_batch = original
    return calls


def replay(calls: list[tuple[Any, ...]]) -> tuple[dict[str, float], str]:
    """One round: each task's ``build_examples`` CPU seconds, and the output digest."""
    from ernie_cpt.data import prepare

    ignored = getattr(prepare, "SECONDS_COLUMN", None)  # older checkouts have no such column
    seconds: collections.Counter[str] = collections.Counter()
    tasks = calls[0][1]
    originals = {name: task.build_examples for name, task in tasks.items()}

    def timed(name: str, build: Any) -> Any:
        def run(document: Any, corpus: Any, rng: Any) -> Any:
            started = time.process_time()
            try:
                return build(document, corpus, rng)
            finally:
                seconds[name] += time.process_time() - started

        return run

    digest = hashlib.sha256()
    try:
        for name, task in tasks.items():
            task.build_examples = timed(name, originals[name])
        for batch, _, corpus, seed, columns in calls:
            out = prepare.build_batch(batch, tasks, corpus, seed, columns)
            out.pop(ignored, None)
            digest.update(json.dumps(out, sort_keys=True).encode())
    finally:  # back to the class's method (or the instance's own, if it had one)
        for name, task in tasks.items():
            del task.build_examples
            if originals[name] != getattr(task, "build_examples", None):
                task.build_examples = originals[name]
    return dict(seconds), digest.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    """Capture once, replay ``--rounds`` times, print per-task minima and the digest."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=2, help="sample repeats (3 MB each)")
    parser.add_argument("--tasks", default=",".join(ALL_TASKS), help="comma-separated tasks")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory() as tmp:
        calls = capture(Path(tmp), args.copies, args.tasks.split(","))
    rounds = [replay(calls) for _ in range(args.rounds)]
    digests = {digest for _, digest in rounds}
    if len(digests) != 1:
        raise SystemExit(f"the output changed between rounds: {sorted(digests)}")
    best = {name: min(r[name] for r, _ in rounds) for name in rounds[0][0]}
    documents = sum(len(call[0]["id"]) for call in calls)
    ranked = sorted(best.items(), key=lambda item: -item[1])
    parts = ", ".join(f"{name} {value:.2f}" for name, value in ranked)
    print(f"checkout {ROOT}: {documents} documents, {len(calls)} batches, {args.rounds} rounds")
    print(f"fastest round per task (CPU-s inside build_examples): {parts}")
    print(f"total {sum(best.values()):.2f} CPU-s; output digest {digests.pop()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
