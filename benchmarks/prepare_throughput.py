"""Preparation throughput and memory: MB/s per core and peak RSS at two corpus sizes.

Builds JSON Lines corpora by repeating the built-in Wikipedia sample (every copy gets new
document ids, so nothing is deduplicated), then runs ``ernie-cpt prepare`` in a fresh child
process with a fresh cache for each (corpus size, task set) pair and reads the child's CPU
time and peak RSS from ``os.wait4``. MB are megabytes (10^6 bytes) of the corpus file;
"per core" divides by the child's user + system CPU seconds, so other load on a shared
machine disturbs it less than wall time. Prints a table, then the ratios against the
targets of issue 10, and the rate of the megabytes between the two sizes (what a corpus
adds per MB once the fixed start-up costs are paid). Last, the floor of each task set on the
larger corpus: each task's CPU seconds per MB inside ``build_examples`` (from the data
report), the CPU seconds per MB that reading + sentence splitting, tokenizing and
converting the prepared examples to Arrow take by themselves, the ceiling on MB/s per core
they leave before any task logic runs, and the share of the run that is the rest. Never
run as a timed test.

    python benchmarks/prepare_throughput.py                     # 1x and 4x the sample
    python benchmarks/prepare_throughput.py --copies 16,64 --tasks all
    python benchmarks/prepare_throughput.py --tokenizer train   # each run trains its own
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALL_TASKS = (
    "mlm",
    "knowledge_masking",
    "capitalization",
    "token_document_relation",
    "sentence_reordering",
    "sentence_distance",
    "discourse_relation",
    "ir_relevance",
)
TASK_SETS = {"mlm": ("mlm",), "all": ALL_TASKS}
TARGET_MB_PER_CORE = {"mlm": 3.0, "all": 1.0}
TARGET_RSS_RATIO = 1.2


def write_corpus(path: Path, copies: int) -> float:
    """The built-in sample repeated ``copies`` times as JSON Lines; returns its size in MB."""
    sys.path.insert(0, str(ROOT))
    from ernie_cpt.data.corpus import load_wikipedia_sample

    records = load_wikipedia_sample()
    with path.open("w", encoding="utf-8") as handle:
        for copy in range(copies):
            for record in records:
                row = {**record, "id": f"{record['id']}-copy{copy}"}
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path.stat().st_size / 1e6


def write_config(
    path: Path,
    corpus: Path,
    tasks: tuple[str, ...],
    extra: list[str],
    tokenizer: Path | None = None,
) -> None:
    """A prepare-only config: the demo's data settings, one worker process; a WordPiece
    vocabulary of 8,000 trained on the corpus, or the fixed ``tokenizer`` directory."""
    lines = [
        "tokenizer:",
        f"  path: {json.dumps(str(tokenizer))}" if tokenizer else "  vocab_size: 8000",
        "data:",
        f"  corpus: {json.dumps(str(corpus))}",
        "  max_seq_length: 128",
        "  heldout_fraction: 0.1",
        "  num_proc: 1",
        *extra,
        "tasks:",
        *(f"  {task}: {{}}" for task in tasks),
    ]
    path.write_text("\n".join(lines) + "\n")


def run_prepare(config: Path, cache: Path) -> dict[str, float]:
    """One ``ernie-cpt prepare`` in a child process: CPU seconds, wall seconds, peak RSS
    (``ru_maxrss``) and, sampled from ``/proc`` every 50 ms on Linux, the peaks of its two
    parts: ``RssAnon`` (the process's own memory) and ``RssFile`` (resident pages of mapped
    files, e.g. memory-mapped Arrow)."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "HF_DATASETS_CACHE": str(cache / "hf"),
    }
    command = [sys.executable, "-m", "ernie_cpt.cli", "prepare", str(config)]
    command += ["--cache-dir", str(cache)]
    cache.mkdir(parents=True, exist_ok=True)
    log_path = cache / "prepare.stderr"
    started = time.perf_counter()
    with log_path.open("wb") as log:
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
        peaks = {"RssAnon": 0, "RssFile": 0}
        sampler = threading.Thread(target=_sample_rss, args=(child.pid, peaks), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        sampler.join()
    wall = time.perf_counter() - started
    if child.returncode != 0:
        stderr = log_path.read_text(errors="replace")
        raise SystemExit(f"prepare failed ({config}):\n{stderr[-3000:]}")
    return {
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux reports KiB
        "peak_anon_mb": peaks["RssAnon"] / 1024,
        "peak_file_mb": peaks["RssFile"] / 1024,
    }


def _sample_rss(pid: int, peaks: dict[str, int]) -> None:
    """Track the peak of each ``peaks`` key (kB lines of ``/proc/<pid>/status``) until the
    process is gone; does nothing where ``/proc`` is absent."""
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            text = status.read_text()
        except OSError:
            return
        if "State:\tZ" in text:  # exited, waiting to be reaped
            return
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key in peaks:
                peaks[key] = max(peaks[key], int(value.split()[0]))
        time.sleep(0.05)


def tokenizer_rate(corpus: Path, tokenizer: Path, method: str = "encode_batch") -> float:
    """MB/s per core of the tokenizer alone on the corpus texts (the tokenizers library's
    Rust WordPiece: normalizer, pre-tokenizer, model; one thread, CPU seconds of the encode
    calls only): the ceiling of any preparation that tokenizes the text once.
    ``method``: ``encode_batch`` (with character offsets, as the word-aware tasks need) or
    ``encode_batch_fast`` (ids only, as MLM and the sentence tasks take them)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread, as prepare's one worker
    from tokenizers import Tokenizer

    encode = getattr(Tokenizer.from_file(str(tokenizer / "tokenizer.json")), method)
    seconds = 0.0
    with corpus.open(encoding="utf-8") as handle:
        texts = (json.loads(line)["text"] for line in handle)
        while batch := list(itertools.islice(texts, 64)):
            started = time.process_time()
            encode(batch, add_special_tokens=False)
            seconds += time.process_time() - started
    return corpus.stat().st_size / 1e6 / seconds


def encoder_rate(corpus: Path, tokenizer: Path, offsets: bool) -> float:
    """MB/s per core of ernie-cpt's ``TextEncoder`` (what preparation tokenizes through:
    per sentence, printable-ASCII sentences without the backend's normalizer) on the corpus
    split into sentences (untimed); CPU seconds of the ``encode`` calls, one per document."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    sys.path.insert(0, str(ROOT))
    from ernie_cpt.config import DataConfig
    from ernie_cpt.data.segmentation import segment_text
    from ernie_cpt.data.tokenization import load_tokenizer
    from pretrain_tasks.encoding import TextEncoder

    encoder = TextEncoder(load_tokenizer(str(tokenizer)))
    longest = DataConfig().max_sentence_chars  # the default, as the configs written here
    seconds = 0.0
    with corpus.open(encoding="utf-8") as handle:
        for line in handle:
            paragraphs = segment_text(json.loads(line)["text"], longest).paragraphs
            sentences = [sentence for _, group in paragraphs for sentence in group]
            started = time.process_time()
            encoder.encode(sentences, offsets)
            seconds += time.process_time() - started
    return corpus.stat().st_size / 1e6 / seconds


def reading_rate(corpus: Path) -> float:
    """MB/s per core of reading the corpus and splitting it into sentences (``json.loads``
    + ``segment_text`` with the default splitter and sentence length, per line), the part
    of every preparation that comes before tokenizing."""
    sys.path.insert(0, str(ROOT))
    from ernie_cpt.config import DataConfig
    from ernie_cpt.data.segmentation import segment_text

    longest = DataConfig().max_sentence_chars
    started = time.process_time()
    with corpus.open(encoding="utf-8") as handle:
        for line in handle:
            segment_text(json.loads(line)["text"], longest)
    return corpus.stat().st_size / 1e6 / (time.process_time() - started)


def output_rate(cache: Path, corpus_mb: float) -> float:
    """MB of corpus per CPU second of turning a prepare run's output (every task's saved
    examples under ``cache``) from Python lists into Arrow again, as ``datasets.map`` does
    with what the tasks return: each split read back (untimed) in batches of 1,000 rows and
    written through ``datasets``' ``ArrowWriter`` with the same features (timed). A lower
    bound of the real writing: the pass writes every task's columns at once and then
    copies each task's rows out."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    seconds = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for info in sorted(cache.glob("prepared/*/*/*/dataset_info.json")):
            examples = datasets.load_from_disk(str(info.parent))
            with ArrowWriter(features=examples.features, path=f"{tmp}/out.arrow") as writer:
                for batch in examples.iter(batch_size=1000):
                    started = time.process_time()
                    writer.write_batch(batch)
                    seconds += time.process_time() - started
                started = time.process_time()
                writer.finalize()
                seconds += time.process_time() - started
    return corpus_mb / seconds


def print_task_times(name: str, cache: Path, corpus_mb: float) -> None:
    """Each task's ``build_examples`` CPU seconds per MB of corpus, from the run's data
    report (a task's time includes tokenizing the sentences it is first to ask for)."""
    (report,) = cache.glob("prepared/*/data_report.json")
    tasks = json.loads(report.read_text())["tasks"]
    seconds = {
        task: entry.get("train_cpu_seconds", 0.0) + entry.get("heldout_cpu_seconds", 0.0)
        for task, entry in tasks.items()
    }
    total = sum(seconds.values()) or 1.0
    parts = ", ".join(
        f"{task} {value / corpus_mb:.3f} ({value / total:.0%})"
        for task, value in sorted(seconds.items(), key=lambda item: -item[1])
    )
    print(f"{name}: CPU-s per MB inside each task's build_examples: {parts}")


def print_floor(
    corpus: Path,
    corpus_mb: float,
    caches: dict[str, Path],
    encoder: dict[bool, float],
    rates: dict[str, float],
) -> None:
    """Per task set: the CPU seconds per MB that reading + splitting, the TextEncoder (ids
    only for MLM, with offsets once a word-aware task is in) and writing the examples take
    by themselves, and the rate they leave as a ceiling before any task logic runs, beside
    the run's own ``rates`` (MB/s per core)."""
    reading = 1 / reading_rate(corpus)
    for name, cache in caches.items():
        encoding = 1 / encoder[name != "mlm"]
        writing = 1 / output_rate(cache, corpus_mb)
        print_task_times(name, cache, corpus_mb)
        floor = reading + encoding + writing
        actual = 1 / rates[name]
        rest = max(actual - floor, 0.0)
        print(
            f"{name}: CPU-s per MB: reading + splitting {reading:.3f}, tokenizing "
            f"{encoding:.3f}, writing the examples {writing:.3f}: {floor:.3f} together, a "
            f"ceiling of {1 / floor:.3f} MB/s per core before any task logic (target "
            f"{TARGET_MB_PER_CORE[name]}); the run took {actual:.3f}, the rest ({rest:.3f}, "
            f"{rest / actual:.0%}) is the tasks' own work, the per-task saves and statistics "
            f"(and set-up, at one size)"
        )


def train_tokenizer(work: Path, corpus: Path, extra: list[str]) -> Path:
    """An 8,000-token WordPiece trained (untimed) by an MLM-only prepare of ``corpus``."""
    config = work / "tokenizer.yaml"
    write_config(config, corpus, ("mlm",), extra)
    run_prepare(config, work / "cache-tokenizer")
    (folder,) = (work / "cache-tokenizer" / "tokenizers").glob("wordpiece-*")
    return folder


def main(argv: list[str] | None = None) -> int:
    """Measure every (size, task set) pair and print the table and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", default="1,4", help="two sample repeat counts, small,large")
    parser.add_argument("--tasks", default="mlm,all", help="task sets: mlm, all")
    parser.add_argument("--data", action="append", default=[], help="extra data: line, k: v")
    parser.add_argument("--workdir", default=None, help="keep corpora and caches here")
    parser.add_argument(
        "--tokenizer",
        choices=("fixed", "train"),
        default="fixed",
        help="fixed: every run loads one tokenizer trained beforehand (untimed) on the "
        "smallest corpus, so the rate is per MB of preparation; train: each run trains its own",
    )
    args = parser.parse_args(argv)
    copies = [int(c) for c in args.copies.split(",")]
    task_sets = args.tasks.split(",")
    extra = [f"  {line}" for line in args.data]
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        results: dict[tuple[str, int], dict[str, float]] = {}
        tokenizer = None
        for count in copies:
            corpus = work / f"corpus-{count}.jsonl"
            size_mb = write_corpus(corpus, count)
            if args.tokenizer == "fixed" and tokenizer is None:
                tokenizer = train_tokenizer(work, corpus, extra)
            for name in task_sets:
                config = work / f"{name}-{count}.yaml"
                write_config(config, corpus, TASK_SETS[name], extra, tokenizer)
                row = run_prepare(config, work / f"cache-{name}-{count}")
                row["mb"] = size_mb
                row["mb_per_core_s"] = size_mb / row["cpu_s"]
                results[(name, count)] = row
                print(
                    f"{name:>4} x{count:<3} {size_mb:7.1f} MB  cpu {row['cpu_s']:7.1f} s  "
                    f"wall {row['wall_s']:7.1f} s  {row['mb_per_core_s']:6.3f} MB/s/core  "
                    f"peak RSS {row['peak_rss_mb']:7.0f} MB (own {row['peak_anon_mb']:5.0f}, "
                    f"mapped files {row['peak_file_mb']:5.0f})",
                    flush=True,
                )
        if tokenizer is not None:
            print_tokenizer_rates(work, corpus, size_mb, tokenizer, results, copies, task_sets)
    print_ratios(results, copies, task_sets)
    return 0


def print_tokenizer_rates(
    work: Path,
    corpus: Path,
    size_mb: float,
    tokenizer: Path,
    results: dict[tuple[str, int], dict[str, float]],
    copies: list[int],
    task_sets: list[str],
) -> None:
    """On the larger corpus: the tokenizers library alone, ernie-cpt's TextEncoder, each
    task set's rate as a fraction of the library's, then each task set's floor."""
    ceiling = tokenizer_rate(corpus, tokenizer)
    fast = tokenizer_rate(corpus, tokenizer, "encode_batch_fast")
    print(
        f"tokenizers library alone on the x{copies[-1]} corpus (whole documents): "
        f"{ceiling:.3f} MB/s per core with offsets, {fast:.3f} without (ids only)"
    )
    mine, mine_fast = (encoder_rate(corpus, tokenizer, o) for o in (True, False))
    print(
        f"ernie-cpt's TextEncoder on its sentences: {mine:.3f} MB/s per core with "
        f"offsets, {mine_fast:.3f} without ({mine / ceiling:.2f}x and "
        f"{mine_fast / fast:.2f}x the library alone)"
    )
    for name in task_sets:
        rate = results[(name, copies[-1])]["mb_per_core_s"]
        print(
            f"{name}: {rate / ceiling:.2f}x the tokenizer-alone rate with offsets, "
            f"{rate / fast:.2f}x without"
        )
    caches = {name: work / f"cache-{name}-{copies[-1]}" for name in task_sets}
    rates = {
        name: marginal_rate(results, copies, name) or results[(name, copies[-1])]["mb_per_core_s"]
        for name in task_sets
    }
    print_floor(corpus, size_mb, caches, {True: mine, False: mine_fast}, rates)


def marginal_rate(
    results: dict[tuple[str, int], dict[str, float]], copies: list[int], name: str
) -> float | None:
    """MB/s per core of the MB between the smallest and the largest size (fixed costs:
    interpreter, imports, set-up cancel out); None with one size, or when the larger run
    took no more CPU (too small to tell)."""
    small, large = results[(name, copies[0])], results[(name, copies[-1])]
    extra_cpu = large["cpu_s"] - small["cpu_s"]
    return (large["mb"] - small["mb"]) / extra_cpu if extra_cpu > 0 else None


def print_ratios(
    results: dict[tuple[str, int], dict[str, float]], copies: list[int], task_sets: list[str]
) -> None:
    """Throughput against the per-core targets; RSS growth between the two sizes."""
    for name in task_sets:
        rate = results[(name, copies[-1])]["mb_per_core_s"]
        target = TARGET_MB_PER_CORE[name]
        print(f"{name}: {rate:.3f} MB/s per core at the larger size (target >= {target})")
        if len(copies) >= 2:
            small, large = results[(name, copies[0])], results[(name, copies[-1])]
            if (marginal := marginal_rate(results, copies, name)) is not None:
                print(f"{name}: {marginal:.3f} MB/s per core for the MB between the two sizes")
            ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
            scale = large["mb"] / small["mb"]
            print(
                f"{name}: peak RSS x{ratio:.2f} for x{scale:.1f} the corpus "
                f"(target <= {TARGET_RSS_RATIO} at 4x)"
            )


if __name__ == "__main__":
    sys.exit(main())
