"""The export's model card (``README.md``), as Hugging Face exports carry one.

Written from what the run recorded: the resolved config and trainer state saved with the
checkpoint, the schedule, and the newest row of ``eval.jsonl`` at or before the exported step.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def heldout_row(run_dir: Path, step: int) -> dict[str, Any] | None:
    """The last ``eval.jsonl`` row at or before ``step`` (None when the run evaluated nothing)."""
    path = Path(run_dir) / "eval.jsonl"
    if not path.is_file():
        return None
    best = None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash mid-write
        if isinstance(row, dict) and row.get("step", 0) <= step and "metrics" in row:
            best = row
    return best


def _metrics_table(row: Mapping[str, Any] | None) -> list[str]:
    if row is None:
        return ["No held-out evaluation was recorded (`train.eval_batches` = 0)."]
    lines = [
        f"Held-out split, step {row['step']} ({row.get('kind', 'eval')}):",
        "",
        "| task | metric | value |",
        "|---|---|---|",
    ]
    for task, values in row["metrics"].items():
        for name, value in values.items():
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            lines.append(f"| {task} | {name} | {shown} |")
    return lines


def _usage(masked_lm: str | None, task_ids: Mapping[str, int]) -> list[str]:
    lines = [
        "```python",
        "from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer, pipeline",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("PATH")',
        'encoder = AutoModel.from_pretrained("PATH")  # ErnieModel, pooler included',
    ]
    if masked_lm:
        lines += [
            'mlm = AutoModelForMaskedLM.from_pretrained("PATH")  # the trained masked-LM head',
            'fill = pipeline("fill-mask", model="PATH")',
        ]
    lines += [
        "```",
        "",
        "Every task's head is in `heads.safetensors` (keys `<task>.<parameter>`, read with",
        "`safetensors.torch.load_file`; a decoder tied to the word embeddings is not repeated:",
        "see `tied_to_word_embeddings` in `task_ids.json`). The encoder adds a task embedding",
        "(`task_type_ids`, default 0) chosen by the task-id map in `task_ids.json`: "
        + ", ".join(f"`{t}` = {i}" for t, i in task_ids.items())
        + ".",
    ]
    if masked_lm and task_ids.get(masked_lm, 0) != 0:
        lines.append(
            f"The masked-LM head was trained with task id {task_ids[masked_lm]}: pass "
            f"`task_type_ids` filled with it for predictions as in training."
        )
    return lines


def model_card(run_dir: Path, saved: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    """Markdown with YAML front matter: tasks, schedule, steps, tokens, data, metrics, usage."""
    config, state = saved["config"], saved["train_state"]
    model, data = config.get("model", {}), config.get("data", {})
    stages = saved.get("schedule", {}).get("stages", [])
    stage_lines = [
        f"  {i + 1}. {s.get('name', '')}: "
        + ", ".join(f"{t} {n} steps" for t, n in s.get("budgets", {}).items())
        for i, s in enumerate(stages)
    ]
    total = sum(sum(s.get("budgets", {}).values()) for s in stages)
    head = info.get("masked_lm_head")
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {'fill-mask' if head else 'feature-extraction'}",
        "tags: [ernie, ernie-cpt, continual-pretraining, multi-task]",
        "---",
        f"# {Path(run_dir).resolve().name}",
        "",
        "An ERNIE encoder continually pre-trained on several tasks with ernie-cpt.",
        "",
        "## Training",
        "",
        f"- Started from: {model.get('init_from') or 'random initialisation'}",
        f"- Encoder: hidden {model.get('hidden_size')}, {model.get('num_hidden_layers')} layers, "
        f"{model.get('num_attention_heads')} heads",
        "- Tasks (task id): "
        + ", ".join(f"{t} ({i})" for t, i in state.get("task_ids", {}).items()),
        f"- Schedule: {info.get('schedule')} ({config.get('schedule', {}).get('kind')}), stages:",
        *stage_lines,
        f"- Steps: {state.get('step')} of {total}; tokens seen: {state.get('tokens', 0):,}",
        f"- Data: {data.get('corpus')} (max sequence length {data.get('max_seq_length')}, "
        f"held-out fraction {data.get('heldout_fraction')})",
        f"- Masked-LM head exported as `cls.predictions`: {head or 'none (no masked-LM task)'}",
        "",
        "## Held-out metrics",
        "",
        *_metrics_table(heldout_row(run_dir, int(state.get("step", 0)))),
        "",
        "## How to load",
        "",
        *_usage(head, state.get("task_ids", {})),
        "",
    ]
    return "\n".join(lines)
