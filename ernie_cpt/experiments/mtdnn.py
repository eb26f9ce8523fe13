"""MT-DNN multi-task fine-tuning (Liu et al. 2019, "Multi-Task Deep Neural Networks for
Natural Language Understanding"), and the same loop for one task at a time.

One shared encoder (the export, loaded with ``AutoModel``) and one head per downstream task
on the pooled [CLS] output (dropout, then a linear layer): single-sentence and pair
classification (cross-entropy), similarity regression (mean squared error) and relevance
ranking (a score per candidate, MT-DNN's listwise softmax loss over the candidates of one
query, sec. 3.1: ``-log exp(γ s+) / Σ exp(γ s')``). Every epoch each task's examples are cut
into mini-batches (ranking: whole candidate lists) and the batches of all tasks are drawn in
a seeded random order; with ``temperature`` T each task gets a share of the epoch's batches
proportional to ``batches^(1/T)`` (T = 1: proportional to its size, MT-DNN's sampling; large
T: uniform over tasks). Task ``i`` puts id ``task_id + i`` in the task embedding
(``task_type_ids``) when the encoder has one, in multi-task and single-task runs alike.
``then_single``: after the multi-task stage, each task is fine-tuned alone from the
multi-task model (MT-DNN's second stage) and scored again.

AdamW, linear warm-up and decay, gradient clipping at 1, dropout on: the settings of
``finetune.py``. With one task that is not ranking, one seed reproduces ``finetune_once``
exactly (same initialisation order, the same batch order), so ``evaluate`` and
``finetune`` agree. Each seed's dev metrics are taken after the last epoch; a task reports
the median over seeds of every metric, and the run's ``score`` is the mean over tasks of
the median scores.
"""

from __future__ import annotations

import copy
import json
import math
import random
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ernie_cpt.errors import InputError, MissingInputError
from ernie_cpt.experiments.finetune import FinetuneConfig, encode
from ernie_cpt.experiments.glue import DownstreamTask, combine_splits, split_metrics


@dataclass(frozen=True)
class MultitaskConfig:
    """How tasks share the fine-tuning (defaults: MT-DNN's)."""

    multitask: bool = True
    then_single: bool = False
    temperature: float = 1.0  # task share of an epoch's batches ~ batches^(1/T)
    ranking_gamma: float = 1.0  # γ of the listwise softmax
    shared_task_id: bool = False  # every task uses FinetuneConfig.task_id
    device: str = "auto"  # "auto": cuda when available, else cpu


# ---------------------------------------------------------------------- losses and batching
def listwise_ranking_loss(scores: Any, labels: Any, groups: Any, gamma: float = 1.0) -> Any:
    """MT-DNN's ranking loss: for each candidate list (same ``groups`` id) holding a relevant
    candidate, ``-mean over relevant c of log softmax(γ scores of the list)[c]``, averaged over
    lists. scores (B,) float, labels (B,) 0/1, groups (B,) int; lists without a relevant
    candidate contribute nothing."""
    import torch

    losses = []
    for group in torch.unique(groups):
        member = groups == group
        relevant = labels[member] > 0
        if relevant.any():
            log_p = torch.log_softmax(gamma * scores[member], dim=0)  # (candidates,)
            losses.append(-log_p[relevant].mean())
    return torch.stack(losses).mean() if losses else scores.sum() * 0.0


def batch_counts(batches: Sequence[int], temperature: float = 1.0) -> list[int]:
    """Batches drawn from each task in one epoch: the tasks' own numbers at T = 1; otherwise
    the same total split in proportion to ``batches^(1/T)`` (largest remainder, at least 1)."""
    if temperature == 1.0 or len(batches) == 1:
        return list(batches)
    if temperature <= 0:
        raise InputError(f"temperature must be > 0, got {temperature}")
    weights = [n ** (1.0 / temperature) for n in batches]
    total = sum(batches)
    exact = [total * w / sum(weights) for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return [max(1, c) for c in counts]


def task_order(counts: Sequence[int], rng: random.Random) -> list[int]:
    """Task index of every batch of an epoch: each task ``counts[i]`` times, shuffled."""
    order = [i for i, n in enumerate(counts) for _ in range(n)]
    rng.shuffle(order)
    return order


def epoch_batches(task: DownstreamTask, size: int, generator: Any) -> list[list[int]]:
    """Row indices of one epoch's mini-batches of a task (ranking: whole candidate lists,
    packed up to ``size`` rows; a longer list is a batch of its own)."""
    import torch

    data = task.train
    if data.task_type != "ranking":
        order = torch.randperm(len(data), generator=generator).tolist()
        return [order[i : i + size] for i in range(0, len(order), size)]
    lists: dict[str, list[int]] = {}
    for row, group in enumerate(data.groups or []):
        lists.setdefault(group, []).append(row)
    members = list(lists.values())
    batches: list[list[int]] = [[]]
    for k in torch.randperm(len(members), generator=generator).tolist():
        if batches[-1] and len(batches[-1]) + len(members[k]) > size:
            batches.append([])
        batches[-1].extend(members[k])
    return batches


def plan_steps(
    tasks: Sequence[DownstreamTask], config: FinetuneConfig, temperature: float, seed: int
) -> list[tuple[int, list[int]]]:
    """(task index, rows) of every training step, all epochs: each epoch draws every task's
    batches from one seeded generator (in task order), then mixes them in a seeded order."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    steps = []
    for _ in range(config.epochs):
        per_task = [epoch_batches(t, config.batch_size, generator) for t in tasks]
        drawn = [0] * len(tasks)
        for i in task_order(batch_counts([len(b) for b in per_task], temperature), rng):
            steps.append((i, per_task[i][drawn[i] % len(per_task[i])]))  # T != 1 may cycle
            drawn[i] += 1
    return steps


# ------------------------------------------------------------------------------------ model
def build_multitask_model(model_dir: Path, outputs: Sequence[int], dropout: float) -> Any:
    """The exported encoder plus one dropout + linear head per task on the pooled output
    (built in this order so that one head initialises as ``finetune.build_classifier``'s)."""
    from torch import nn
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    class MultiTaskModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
            self.dropout = nn.Dropout(dropout)
            hidden = self.encoder.config.hidden_size
            self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in outputs)

        def forward(self, batch: Mapping[str, Any], task: int) -> Any:
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
            if getattr(self.encoder.config, "use_task_id", False):
                inputs["task_type_ids"] = batch["task_type_ids"]
            pooled = self.encoder(**inputs).pooler_output  # (B, H)
            return self.heads[task](self.dropout(pooled))  # (B, outputs[task])

    return MultiTaskModel()


def task_ids(count: int, config: FinetuneConfig, shared: bool, vocab: int | None) -> list[int]:
    """Task-embedding id of each task: ``task_id + i`` (or ``task_id`` for all when shared)."""
    ids = [config.task_id if shared else config.task_id + i for i in range(count)]
    if vocab is not None and max(ids) >= vocab:
        raise InputError(
            f"task ids up to {max(ids)} but the encoder has {vocab} task embeddings: "
            "use --shared-task-id or a lower --task-id"
        )
    return ids


def step_loss(model: Any, batch: Mapping[str, Any], task: int, kind: str, gamma: float) -> Any:
    """The loss of one task's batch (logits (B, C) or scores (B, 1))."""
    import torch.nn.functional as F

    out = model(batch, task)
    if kind == "regression":
        return F.mse_loss(out.squeeze(-1), batch["labels"])
    if kind == "ranking":
        return listwise_ranking_loss(out[:, 0], batch["labels"], batch["groups"], gamma)
    return F.cross_entropy(out, batch["labels"])


# ------------------------------------------------------------------------ training, scoring
@dataclass
class Prepared:
    """Tokenized tensors of every task: train (N, T) and each dev split, plus task ids."""

    train: list[dict[str, Any]]
    devs: list[dict[str, dict[str, Any]]]
    ids: list[int]


def prepare(
    tokenizer: Any, tasks: Sequence[DownstreamTask], length: int, ids: list[int]
) -> Prepared:
    """Tokenize every task once; ranking tensors also carry ``groups`` (int id per row)."""
    import torch

    def tensors(data: Any) -> dict[str, Any]:
        out = encode(tokenizer, data, length)
        if data.groups is not None:
            index = {g: i for i, g in enumerate(dict.fromkeys(data.groups))}
            out["groups"] = torch.tensor([index[g] for g in data.groups])
        return out

    return Prepared(
        [tensors(t.train) for t in tasks],
        [{split: tensors(d) for split, d in t.devs.items()} for t in tasks],
        ids,
    )


def _batch(
    tensors: Mapping[str, Any], rows: Sequence[int], task_id: int, device: Any = None
) -> dict[str, Any]:
    import torch

    batch = {k: v[list(rows)].to(device) for k, v in tensors.items()}
    batch["task_type_ids"] = torch.full_like(batch["input_ids"], task_id)
    return batch


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def train_model(
    model: Any,
    tasks: Sequence[DownstreamTask],
    data: Prepared,
    indices: Sequence[int],
    config: FinetuneConfig,
    mt: MultitaskConfig,
    seed: int,
    desc: str,
    progress: bool,
) -> None:
    """Fine-tune ``model`` on the tasks at ``indices`` (one optimiser, mixed batches)."""
    import torch
    from tqdm import tqdm

    chosen = [tasks[i] for i in indices]
    plan = [(indices[k], rows) for k, rows in plan_steps(chosen, config, mt.temperature, seed)]
    steps, warmup = len(plan), int(len(plan) * config.warmup_ratio)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / max(warmup, 1)
            if s < warmup
            else max(0.0, (steps - s) / max(steps - warmup, 1))
        ),
    )
    model.train()
    bar = tqdm(plan, desc=desc, file=sys.stderr, disable=not progress, mininterval=1.0, leave=False)
    for task, rows in bar:
        batch = _batch(data.train[task], rows, data.ids[task], _device(model))
        loss = step_loss(model, batch, task, tasks[task].train.task_type, mt.ranking_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
    bar.close()


def score_task(model: Any, task: DownstreamTask, data: Prepared, index: int) -> dict[str, float]:
    """Dev metrics of one task (every split; evaluation mode, no gradient)."""
    import torch

    model.train(False)  # evaluation mode (no dropout)
    per_split = {}
    with torch.no_grad():
        for split, tensors in data.devs[index].items():
            predictions: list[float] = []
            for start in range(0, len(tensors["labels"]), 64):
                rows = range(start, min(start + 64, len(tensors["labels"])))
                out = model(_batch(tensors, rows, data.ids[index], _device(model)), index)  # (B, C)
                kind = task.train.task_type
                predictions += (
                    out[:, 0].tolist()
                    if kind in ("regression", "ranking")
                    else out.argmax(-1).tolist()
                )
            per_split[split] = split_metrics(task, predictions, split)
    model.train()
    return combine_splits(per_split)


def tokenize_tasks(
    model_dir: Path, tasks: Sequence[DownstreamTask], config: FinetuneConfig, mt: MultitaskConfig
) -> Prepared:
    """The export's tokenizer applied to every task, with each task's task-embedding id."""
    from transformers import AutoConfig, AutoTokenizer

    encoder_config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    vocab = getattr(encoder_config, "task_type_vocab_size", None)
    use_ids = getattr(encoder_config, "use_task_id", False)
    ids = task_ids(len(tasks), config, mt.shared_task_id, vocab if use_ids else None)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    length = min(config.max_length, encoder_config.max_position_embeddings)
    return prepare(tokenizer, tasks, length, ids)


def run_seed(
    model_dir: Path,
    tasks: Sequence[DownstreamTask],
    config: FinetuneConfig,
    mt: MultitaskConfig,
    seed: int,
    progress: bool = True,
) -> dict[str, dict[str, dict[str, float]]]:
    """One seed: {"multitask" | "single" | "then_single": {task: dev metrics}}."""
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    data = tokenize_tasks(model_dir, tasks, config, mt)
    outputs = [t.outputs for t in tasks]
    # a GPU when there is one (the CPU path is the one evaluate's numbers match)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = mt.device if mt.device != "auto" else auto

    def fresh() -> Any:
        torch.manual_seed(seed)
        return build_multitask_model(model_dir, outputs, config.dropout).to(device)

    def alone(model: Any, i: int, desc: str) -> dict[str, float]:
        train_model(model, tasks, data, [i], config, mt, seed, desc, progress)
        return score_task(model, tasks[i], data, i)

    if not mt.multitask:
        return {
            "single": {
                t.name: alone(fresh(), i, f"seed {seed} {t.name}") for i, t in enumerate(tasks)
            }
        }
    model = fresh()
    every = list(range(len(tasks)))
    train_model(model, tasks, data, every, config, mt, seed, f"seed {seed} multitask", progress)
    out = {"multitask": {t.name: score_task(model, t, data, i) for i, t in enumerate(tasks)}}
    if mt.then_single:
        out["then_single"] = {
            t.name: alone(copy.deepcopy(model), i, f"seed {seed} {t.name} alone")
            for i, t in enumerate(tasks)
        }
    return out


def summarize(
    tasks: Sequence[DownstreamTask], per_seed: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """{task: median of each metric over seeds, ``median`` (= the score's), ``scores``, ...}
    and ``score``: the mean over tasks of the median scores (NaN seeds left out)."""
    out: dict[str, Any] = {}
    for task in tasks:
        runs = [seed[task.name] for seed in per_seed]
        metrics = {
            key: _median([r[key] for r in runs])
            for key in runs[0]
            if isinstance(runs[0][key], float | int)
        }
        out[task.name] = {
            **metrics,
            "median": metrics["score"],
            "scores": [r["score"] for r in runs],
            "metric": task.metric,
            "per_seed": list(runs),
            "train_size": len(task.train),
            "dev_size": {split: len(d) for split, d in task.devs.items()},
            "source": task.source,
        }
    return {"tasks": out, "score": _median_free_mean([v["median"] for v in out.values()])}


def _median(values: Sequence[float]) -> float:
    defined = [float(v) for v in values if not math.isnan(v)]
    return statistics.median(defined) if defined else math.nan


def _median_free_mean(values: Sequence[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return statistics.fmean(defined) if defined else math.nan


def finetune_tasks(
    model_dir: str | Path,
    tasks: Sequence[DownstreamTask],
    *,
    seeds: int = 5,
    config: FinetuneConfig | None = None,
    mt: MultitaskConfig | None = None,
    output_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune on every task for ``seeds`` seeds (multi-task or each alone); medians.
    With ``output_dir``, each seed's metrics are kept in ``seed-<k>.json`` and reused when
    the model, data and settings are unchanged (an interrupted run resumes)."""
    config, mt = config or FinetuneConfig(), mt or MultitaskConfig()
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise MissingInputError(f"{model_dir}: not an exported model (no config.json)")
    settings = {
        "model": str(model_dir.resolve()),
        "config": asdict(config),
        "multitask": asdict(mt),
    }
    settings["tasks"] = {t.name: [t.source, len(t.train), t.metric] for t in tasks}
    per_seed = []
    for seed in range(seeds):
        cached = _cached_seed(output_dir, seed, settings)
        result = cached or run_seed(model_dir, tasks, config, mt, seed, progress)
        if cached is None and output_dir is not None:
            _write_json(
                Path(output_dir) / f"seed-{seed}.json", {"settings": settings, "result": result}
            )
        per_seed.append(result)
    final = (
        "then_single"
        if mt.then_single and mt.multitask
        else ("multitask" if mt.multitask else "single")
    )
    summary = summarize(tasks, [s[final] for s in per_seed])
    out = {"model": str(model_dir), "mode": final, "seeds": seeds, **summary}
    if final == "then_single":
        out["multitask_stage"] = summarize(tasks, [s["multitask"] for s in per_seed])
    out["config"], out["multitask_config"] = asdict(config), asdict(mt)
    if output_dir is not None:
        _write_json(Path(output_dir) / "result.json", out)
    return out


def _cached_seed(output_dir: str | Path | None, seed: int, settings: Mapping[str, Any]) -> Any:
    path = Path(output_dir or "") / f"seed-{seed}.json"
    if output_dir is None or not path.exists():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved.get("settings") != json.loads(json.dumps(settings)):
        return None
    return _nan_back(saved["result"])


def _nan_back(tree: Any) -> Any:
    """Undo ``json_safe``: metrics written as null were NaN."""
    if isinstance(tree, dict):
        return {k: _nan_back(v) for k, v in tree.items()}
    return math.nan if tree is None else tree


def _write_json(path: Path, value: Any) -> None:
    from ernie_cpt.experiments.report import json_safe

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(json_safe(value), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
