"""MLM-only training throughput: ernie-cpt's trainer step vs a plain Hugging Face loop.

Both sides train the same tiny encoder shape on the same prepared MLM examples, batch by
batch in the same order, in one process, fp32 on CPU:

(a) ernie-cpt: ``trainer.setup`` (``prepare_data``, ``build_model``, ``TrainModule``,
    ``init_distributed``, ``build_engine``: a DeepSpeed ZeRO-0 engine, ``TaskStream``s) and
    ``trainer.train_step`` (``MLMTask.collate`` with dynamic whole-word masking -> engine
    forward -> ``engine.backward`` -> ``engine.step`` -> statistics).
(b) Hugging Face: ``BertForMaskedLM`` of the same shape, ``DataCollatorForLanguageModeling
    (whole_word_mask=True)`` fed by a ``DataLoader``, ``torch.optim.AdamW`` with the same
    hyper-parameters, gradient clipping and linear warm-up/decay.

Rounds alternate the two sides (the first one to run alternates too); warm-up steps are not
timed. Throughput counts non-pad tokens (``attention_mask.sum()``) on both sides.

    python benchmarks/mlm_throughput.py [--steps 20] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DataCollatorForLanguageModeling,
    get_linear_schedule_with_warmup,
)

from ernie_cpt.config import RunConfig, load_config
from ernie_cpt.data.task_stream import TaskStream
from ernie_cpt.training.run_setup import Run, RunOptions, setup
from ernie_cpt.training.step import train_step

TASK = "mlm"
NO_DECAY = ("bias", "LayerNorm.weight")


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=20, help="timed steps per side per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per side first")
    p.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: stable on a shared CPU)"
    )
    return p.parse_args()


def build_config(args: argparse.Namespace) -> RunConfig:
    """The config with only the MLM task and a schedule long enough for every step."""
    total = args.warmup + args.steps * args.rounds
    overrides = [
        "tasks={mlm: {}}",
        f"schedule.iterations_per_task={total + 1}",
        "logging.progress_bar=false",
    ]
    if args.batch_size is not None:
        overrides.append(f"train.micro_batch_size={args.batch_size}")
    return load_config(args.config, overrides + args.set)


def ernie_stepper(run: Run) -> Callable[[], int]:
    """One ``train_step`` per call; returns its non-pad token count."""
    counter = itertools.count()

    def step() -> int:
        index = next(counter)
        stage = run.schedule.stages[run.schedule.stage_at(index)]
        return train_step(run, TASK, stage, index).tokens

    return step


def word_offsets(word_starts: list[int]) -> list[tuple[int, int]]:
    """Character offsets that make the HF collator see the same words as ``word_starts``.

    Sub-tokens of a word are contiguous (start == previous end); a new word leaves a gap.
    Special tokens are flagged separately by ``special_tokens_mask``.
    """
    offsets, end = [], 0
    for start_flag in word_starts:
        start = end + 1 if start_flag else end
        offsets.append((start, start + 1))
        end = start + 1
    return offsets


def hf_columns(batch: dict[str, list[Any]], special_ids: list[int]) -> dict[str, list[Any]]:
    """``datasets.map`` function: the columns a tokenizer gives with offsets and special masks."""
    special = set(special_ids)
    return {
        "special_tokens_mask": [[int(t in special) for t in ids] for ids in batch["input_ids"]],
        "offset_mapping": [word_offsets(ws) for ws in batch["word_starts"]],
    }


def index_stream(run: Run) -> Iterator[int]:
    """Example indices in the order ernie-cpt's stream visits them (epoch after epoch)."""
    t = run.config.train
    bucketing = {"bucket_size": t.bucket_size} if hasattr(t, "bucket_size") else {}
    stream = TaskStream(run.data.train[TASK], TASK, t.micro_batch_size, t.seed, **bucketing)
    for epoch in itertools.count():
        yield from (int(i) for i in stream.order(epoch))


def hf_stepper(
    run: Run, masked_only: bool = False, workers: int = 0, sparse_top: bool = False
) -> Callable[[], int]:
    """A plain transformers MLM training step over the same examples; returns token count.

    ``masked_only``: the loss decodes the masked positions only (``model.bert`` then
    ``model.cls`` on the selected rows), as ernie-cpt does: the like-for-like loop.
    ``sparse_top`` (with ``masked_only``): BERT's top layer is also computed at the masked
    rows only, with ernie-cpt's ``sparse_top_layer`` (the same arithmetic as ernie-cpt's
    default step). ``workers``: DataLoader worker processes (0: collation in the training
    thread).
    """
    cfg, tokenizer = run.config, run.data.tokenizer
    m, t = cfg.model, cfg.train
    bert = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=m.hidden_size,
        num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads,
        intermediate_size=m.intermediate_size,
        max_position_embeddings=m.max_position_embeddings,
        hidden_dropout_prob=m.hidden_dropout_prob,
        attention_probs_dropout_prob=m.attention_probs_dropout_prob,
        hidden_act=m.hidden_act,
        pad_token_id=tokenizer.pad_token_id,
    )
    bert._attn_implementation = m.attn_implementation
    model = BertForMaskedLM(bert).train()
    named = list(model.named_parameters())
    groups = [
        {
            "params": [p for n, p in named if not n.endswith(NO_DECAY)],
            "weight_decay": t.weight_decay,
        },
        {"params": [p for n, p in named if n.endswith(NO_DECAY)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        groups, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, t.warmup_steps, run.schedule.total_steps)
    dataset = run.data.train[TASK]
    dataset = dataset.map(
        hf_columns, batched=True, fn_kwargs={"special_ids": tokenizer.all_special_ids}
    ).remove_columns("word_starts")
    collator = DataCollatorForLanguageModeling(
        tokenizer,
        whole_word_mask=True,
        mlm_probability=run.data.tasks[TASK].settings.mask_probability,
        mask_replace_prob=1.0,
        random_replace_prob=0.0,
        seed=t.seed,
    )

    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        # tokenizer.pad pads every column but offset_mapping: pad it to the longest here.
        longest = max(len(f["input_ids"]) for f in features)
        for f in features:
            f["offset_mapping"] += [(0, 0)] * (longest - len(f["offset_mapping"]))
        return collator(features)

    loader = DataLoader(
        dataset,
        batch_size=t.micro_batch_size,
        sampler=index_stream(run),
        collate_fn=collate,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    batches = iter(loader)

    def step() -> int:
        batch = next(batches)
        if sparse_top:
            loss = sparse_top_loss(model, batch)
        else:
            loss = masked_loss(model, batch) if masked_only else model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.gradient_clipping)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum())

    return step


def masked_loss(model: BertForMaskedLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over masked positions, decoding those positions only."""
    labels = batch["labels"]
    hidden = model.bert(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch.get("token_type_ids"),
    )[0]  # (B, T, H)
    positions = labels != -100  # (B, T)
    logits = model.cls(hidden[positions])  # (N, V)
    return torch.nn.functional.cross_entropy(logits, labels[positions])


def sparse_top_loss(model: BertForMaskedLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``masked_loss`` with the top layer computed at the masked rows only (BertModel's
    forward unrolled: embeddings, transformers' own 4-D mask, lower layers, sparse top)."""
    from transformers.masking_utils import create_bidirectional_mask

    from ernie_cpt.model.sparse_top import sparse_top_layer, top_row_columns

    labels, attention_mask = batch["labels"], batch["attention_mask"]
    bert = model.bert
    hidden = bert.embeddings(
        input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids")
    )
    mask = create_bidirectional_mask(
        config=bert.config, inputs_embeds=hidden, attention_mask=attention_mask
    )
    *lower, last = bert.encoder.layer
    for layer in lower:
        hidden = layer(hidden, mask)
    rows = (labels.reshape(-1) != -100).nonzero().squeeze(1)
    top = top_row_columns(rows, *labels.shape)
    if top is None:  # too many rows to pay: the whole top layer
        hidden = last(hidden, mask)
    else:
        padded = None if mask is None else attention_mask
        hidden = sparse_top_layer(
            last, hidden, padded, top["top_positions"], top["top_select"], top["top_rows"]
        )
    states = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)
    return torch.nn.functional.cross_entropy(model.cls(states), labels.reshape(-1)[rows])


def timed(step: Callable[[], int], steps: int) -> tuple[int, float, float]:
    """(tokens, wall seconds, process CPU seconds) of ``steps`` calls."""
    wall, cpu, tokens = time.perf_counter(), time.process_time(), 0
    for _ in range(steps):
        tokens += step()
    return tokens, time.perf_counter() - wall, time.process_time() - cpu


def spread(values: list[float], fmt: str = ".0f") -> str:
    """Median [min-max]."""
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def main() -> None:
    """Build both sides, warm up, run alternating rounds, print the table and the ratio."""
    import datasets
    import torch.distributed as dist
    import transformers

    args = parse_args()
    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    config = build_config(args)
    with tempfile.TemporaryDirectory(prefix="mlm-bench-") as tmp:
        run = setup(config, Path(tmp), RunOptions(resume="never", progress=False))
        sides = {"ernie-cpt": ernie_stepper(run), "hf": hf_stepper(run)}
        for step in sides.values():
            timed(step, args.warmup)
        rounds: dict[str, list[tuple[int, float, float]]] = {name: [] for name in sides}
        for index in range(args.rounds):
            for name in list(sides) if index % 2 == 0 else list(sides)[::-1]:
                rounds[name].append(timed(sides[name], args.steps))
        dist.destroy_process_group()
    rates = {name: [n / s for n, s, _ in r] for name, r in rounds.items()}
    ratios = [a / b for a, b in zip(rates["ernie-cpt"], rates["hf"], strict=True)]
    cpu = {name: [c for _, _, c in r] for name, r in rounds.items()}
    cpu_rates = {name: [n / c for n, _, c in r] for name, r in rounds.items()}
    cpu_ratios = [a / b for a, b in zip(cpu_rates["ernie-cpt"], cpu_rates["hf"], strict=True)]
    tokens = {name: [n for n, _, _ in r] for name, r in rounds.items()}
    print(
        f"\nMLM throughput: {args.rounds} rounds x {args.steps} steps per side, batch "
        f"{config.train.micro_batch_size}, max length {config.data.max_seq_length}, "
        f"{torch.get_num_threads()} torch thread(s), same tokens: {tokens['ernie-cpt'] == tokens['hf']}"
    )
    print(
        f"{'side':<10} {'tokens/s median [min-max]':>27} {'ms/step':>8} {'cpu ms/step':>12}"
        "   tokens/s per round"
    )
    for name, values in rates.items():
        ms = statistics.median(1000 * s / args.steps for _, s, _ in rounds[name])
        cpu_ms = statistics.median(1000 * c / args.steps for c in cpu[name])
        per_round = " ".join(f"{v:.0f}" for v in values)
        print(f"{name:<10} {spread(values):>27} {ms:8.1f} {cpu_ms:12.1f}   {per_round}")
    print(f"ratio by process CPU time = {spread(cpu_ratios, '.2f')} (less sensitive to other load)")
    print(f"ratio ernie-cpt/hf = {spread(ratios, '.2f').replace(' ', 'x ', 1)} (target >= 1.3x)")


if __name__ == "__main__":
    main()
