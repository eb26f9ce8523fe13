"""GPU throughput: tokens/s and MFU of ernie-cpt's training step, BERT-base @ seq 128, bf16.

One prepared call on one GPU (H100/H200: under 5 minutes, most of it data preparation on
the built-in sample and compilation). Six measurements, each after untimed warm-up:
MLM-only and the eight-task mixture (each task in turn, sentence tasks carrying their
token tasks' labels), eager with the dense top layer, eager with the sparse one (the
training default, ``ernie_cpt.model.sparse_top``), and with ``torch.compile`` of the
encoder (dynamic shapes: length bucketing gives batches of many lengths; a compiled
encoder takes the dense top layer).

MFU = achieved model FLOP/s / the GPU's peak dense bf16 FLOP/s (989 TFLOP/s for H100/H200
SXM; ``--peak-tflops`` otherwise). Model FLOPs per step, counted on the real (non-pad)
tokens: 6 x (encoder + pooler parameters outside the embeddings) per token, + the attention
matmuls 12 x layers x hidden x length per token, + 6 x hidden x vocab per masked position
for each vocabulary decoder (masked positions only are decoded). Padding is not counted.
With the sparse top layer, the top layer's rows it did not compute are not counted either
(per real token it skipped: 6 x the top layer's parameters other than keys and values,
+ 12 x hidden x length of its attention), so its MFU is of the work done, not of a dense
model's: compare its tokens/s with the dense rows', its MFU with the anchors (NVIDIA's and
DeepSpeed's BERT count the dense model).

    python benchmarks/gpu_throughput.py                 # BERT-base shape, bf16, GPU
    python benchmarks/gpu_throughput.py --smoke         # tiny shape on CPU, a few steps (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import stepper  # noqa: E402

from ernie_cpt.config import load_config  # noqa: E402
from ernie_cpt.training import step as step_module  # noqa: E402
from ernie_cpt.training.run_setup import Run, RunOptions, setup  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
EIGHT = (
    "mlm knowledge_masking capitalization token_document_relation sentence_reordering "
    "sentence_distance discourse_relation ir_relevance"
).split()
BERT_BASE = [
    "model.hidden_size=768",
    "model.num_hidden_layers=12",
    "model.num_attention_heads=12",
    "model.intermediate_size=3072",
    "model.max_position_embeddings=512",
    "tokenizer.vocab_size=30522",
]
TINY = [
    "model.hidden_size=32",
    "model.num_hidden_layers=2",
    "model.num_attention_heads=2",
    "model.intermediate_size=64",
    "model.max_position_embeddings=128",
]


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.yaml", help="corpus/tasks source")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny shape, CPU, fp32, 3 steps")
    return p.parse_args()


def overrides(args: argparse.Namespace) -> list[str]:
    """The run: eight tasks, seq 128, bf16 (fp32 in --smoke), no evaluation or logging."""
    base = [
        "tasks={" + ", ".join(f"{t}: {{}}" for t in EIGHT) + "}",
        "schedule.kind=multitask",
        "schedule.iterations_per_task=100000",
        "data.max_seq_length=128",
        f"data.num_proc={min(os.cpu_count() or 1, 16)}",
        f"train.micro_batch_size={args.batch}",
        "train.eval_batches=0",
        "train.zero_stage=0",
        f"train.precision={'fp32' if args.smoke else 'bf16'}",
        "logging.progress_bar=false",
        "logging.wandb_mode=disabled",
    ]
    smoke = [*TINY, "data.on_empty_task=skip"]  # a tiny corpus may leave a task empty
    return base + (smoke if args.smoke else BERT_BASE) + args.set


def flops_per_step(run: Run, tokens: int, masked: int, length: int, skipped: int = 0) -> float:
    """Model FLOPs of one training step (see the module docstring); ``skipped``: real
    tokens whose top-layer row the sparse top layer did not compute."""
    model = run.engine.module.model
    m = run.config.model
    encoder = model.encoder
    embedding = sum(p.numel() for p in encoder.embeddings.parameters())
    dense = sum(p.numel() for p in encoder.parameters()) - embedding
    vocab = encoder.embeddings.word_embeddings.weight.shape[0]
    attention = 12 * m.num_hidden_layers * m.hidden_size * length
    top = encoder.encoder.layer[-1]
    key_value = [*top.attention.self.key.parameters(), *top.attention.self.value.parameters()]
    per_row = (
        6 * (sum(p.numel() for p in top.parameters()) - sum(p.numel() for p in key_value))
        + 12 * m.hidden_size * length
    )
    full = 6 * dense * tokens + attention * tokens + 6 * m.hidden_size * vocab * masked
    return full - per_row * skipped


def with_sparse_top(run: Run, on: bool) -> None:
    """Switch the run's ``train.sparse_top_layer`` (new micro-batches follow it)."""
    train = dataclasses.replace(run.config.train, sparse_top_layer=on)
    run.config = dataclasses.replace(run.config, train=train)


class SkippedRows:
    """Real tokens whose top-layer row was not computed, over the micro-batches built."""

    def __init__(self) -> None:
        self.count = 0
        self.saved = step_module.read_rows

        def counted(batch: Any, tasks: list[Any]) -> dict[str, torch.Tensor]:
            columns = self.saved(batch, tasks)
            if columns:
                self.count += int(batch["attention_mask"].sum()) - len(columns["top_rows"])
            return columns

        step_module.read_rows = counted

    def stop(self) -> int:
        """Restore ``read_rows``; the count (prefetched batches included)."""
        step_module.read_rows = self.saved
        return self.count


def measure(run: Run, tasks: list[str], args: argparse.Namespace) -> dict[str, float]:
    """Tokens/s and model FLOP/s over ``args.steps`` steps cycling through ``tasks``."""
    cuda = torch.cuda.is_available()
    step = stepper(run, lambda i: tasks[i % len(tasks)])
    for _ in range(args.warmup):
        step()
    masked, skipped = MaskedCounter(run), SkippedRows()
    if cuda:
        torch.cuda.synchronize()
    start, tokens = time.perf_counter(), 0
    for _ in range(args.steps):
        tokens += step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    counted, skipped_rows = masked.stop(), skipped.stop()
    length = run.config.data.max_seq_length
    flops = flops_per_step(run, tokens, counted, length, skipped_rows)
    return {"tokens_per_s": tokens / seconds, "flops_per_s": flops / seconds}


class MaskedCounter:
    """Masked positions decoded (every ``*_targets`` column of the batches taken), host side."""

    def __init__(self, run: Run) -> None:
        self.count = 0
        self.run = run
        self.saved = {n: t.collate for n, t in run.data.tasks.items()}
        self.saved_attach = {n: getattr(t, "attach", None) for n, t in run.data.tasks.items()}
        for task in run.data.tasks.values():
            task.collate = self._counted(task.collate)
            if hasattr(task, "attach"):
                task.attach = self._counted(task.attach, returns_batch=False)

    def _counted(self, fn: Any, returns_batch: bool = True) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            before = set(args[0]) if not returns_batch else set()
            out = fn(*args, **kwargs)
            batch = out if returns_batch else args[0]
            for key in set(batch) - before:
                if key.endswith("_targets"):
                    self.count += int((batch[key] != -100).sum())
            return out

        return wrapped

    def stop(self) -> int:
        """Restore the tasks; the count (prefetched batches included: a small overcount)."""
        for name, task in self.run.data.tasks.items():
            task.collate = self.saved[name]
            if self.saved_attach[name] is not None:
                task.attach = self.saved_attach[name]
        return self.count


def peak(args: argparse.Namespace) -> float | None:
    """Peak dense bf16 FLOP/s of this GPU (None on CPU without --peak-tflops)."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def main() -> None:
    """Prepare, build, measure the four variants, print the table."""
    import datasets
    import transformers

    args = parse_args()
    if args.smoke:
        args.steps, args.warmup, args.batch = 3, 1, min(args.batch, 8)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    config = load_config(args.config, overrides(args))
    top = peak(args)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"device: {device}; peak {top / 1e12 if top else float('nan'):.0f} TFLOP/s")
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        run = setup(config, Path(tmp), RunOptions(resume="never", progress=False))
        rows = []
        variants = [(False, "dense"), (False, "sparse")]
        variants += [] if args.no_compile else [(True, "dense")]
        for compiled, layer in variants:
            if compiled:
                encoder = run.engine.module.model.encoder
                run.engine.module.model.encoder = torch.compile(encoder, dynamic=True)
            with_sparse_top(run, layer == "sparse")
            mixture = list(run.schedule.stages[-1].tasks)  # the eight (minus empty ones)
            for name, tasks in (("mlm-only", ["mlm"]), ("mixture", mixture)):
                result = measure(run, tasks, args)
                rows.append((name, compiled, layer, result))
    header = f"{'variant':<10} {'compile':>7} {'top':>6} {'tokens/s':>12} {'TFLOP/s':>9} {'MFU':>6}"
    print("\n" + header)
    for name, compiled, layer, r in rows:
        mfu = f"{r['flops_per_s'] / top:.1%}" if top else "n/a"
        print(
            f"{name:<10} {str(compiled):>7} {layer:>6} {r['tokens_per_s']:12.0f} "
            f"{r['flops_per_s'] / 1e12:9.2f} {mfu:>6}"
        )


if __name__ == "__main__":
    main()
