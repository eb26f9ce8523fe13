"""The comparison report: ``summary.json``, ``report.md``, PNG plots and a W&B summary run.

``build_summary`` reduces the per-run results of ``ernie_cpt.experiments.compare.collect_run`` to one
entry per schedule: ACC, BWT, FWT and average forgetting as mean / sample std / min / max
and a 95% percentile-bootstrap interval over seeds (NaN, written ``null`` in JSON and ``n/a``
in the table, where a metric is undefined, e.g. BWT of multitask), the seed-mean R matrix,
downstream medians, tokens and wall time. ``paired`` holds the paired differences between
every two schedules on the seeds both ran (forgetting metrics, each task's final score,
each downstream median) with their intervals and whether each is resolved (interval
excludes 0); ``chance`` each task's majority-class score from the runs' data report;
``baselines`` the ``--baseline`` runs (one task alone at equal steps). The methods are in
``ernie_cpt.experiments.statistics``. ``write_report`` writes beside it, under ``plots/``:

- ``loss_curves.png``: per schedule, each task's training loss (moving average; every seed,
  one colour per task), stage boundaries as dashed lines;
- ``r_matrix.png``: per schedule, the seed-mean R matrix as a heatmap (rows: initial model,
  then each stage; columns: tasks, each with its chance level);
- ``forgetting.png``: ACC, BWT, FWT and forgetting per schedule (bar = mean, whisker = std,
  dots = seeds, black line beside the bar = 95% bootstrap interval);
- ``gates.png`` (sharing grids with gated kinds): per variant, the task x expert mean gate
  weights;
- ``downstream.png``: per downstream data set, every fine-tuning seed's score (small dots),
  each pre-trained model's median (large dots) and their mean (bar), per schedule.

With ``--downstream-stages`` report.md also tabulates each schedule's downstream median after
every stage (``summary.json``: ``downstream_stages``).

W&B (``log_wandb_summary``): the training runs already share the group (= the comparison)
with job type = schedule and log ``train/<task>/loss``, ``eval/<task>/<metric>`` after every
stage, and ``schedule/stage_end`` at stage boundaries. After them one run with job type
``summary`` is logged into the same group (offline files under ``<comparison>/wandb``):
tables ``summary`` (one row per schedule), ``runs`` (one per run), ``r_matrix`` (long form:
schedule, seed, stage, task, score) and ``r_matrix/<schedule>`` (seed mean, wide), the
heatmaps and bar charts as ``wandb.Image``, and every summary number in ``run.summary``.
W&B cannot save a workspace offline (``wandb-workspaces`` needs the server), so
``report.md`` lists the panels to add after ``wandb sync``: see ``WANDB_PANELS``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ernie_cpt.experiments.forgetting import LOWER_IS_BETTER, mean_matrix
from ernie_cpt.experiments.statistics import (
    FEW_SEEDS,
    LEVEL,
    RESAMPLES,
    SEED,
    describe,
    paired_differences,
    verdict,
)
from ernie_cpt.training import checkpoint as ckpt
from ernie_cpt.training.run_log import read_jsonl

METRICS = ("acc", "bwt", "fwt", "forgetting")
METRIC_TITLES = {"acc": "ACC", "bwt": "BWT", "fwt": "FWT", "forgetting": "forgetting"}
PLOTS = ("loss_curves.png", "r_matrix.png", "forgetting.png", "downstream.png")

WANDB_PANELS = """\
In the project's workspace, filter runs by this group, group runs by **Job Type** (= schedule)
and add:

1. Line plot `train/*/loss` against `trainer/step`, grouped by job type (mean with min/max
   band over seeds): one panel per task, shows each task's curve under every schedule.
2. Line plot `eval/*/accuracy` against `trainer/step` (points are the per-stage
   evaluations: R's rows over time); `schedule/stage_end` as a second series marks the
   stage boundaries.
3. Line plot `weights/*` (loss weights) and `throughput/tokens_per_s`, grouped by job type.
4. From the `summary` run: Table panels `summary`, `runs` and `r_matrix/<schedule>`; a bar
   chart from `summary` (x = schedule, y = acc_mean / bwt_mean); Media panels
   `plots/r_matrix`, `plots/forgetting`, `plots/downstream`, `plots/loss_curves`.
5. Parallel coordinates over the training runs: `train.seed`, `schedule.kind` against the
   final `eval/*/accuracy`.
"""


# ------------------------------------------------------------------------------- summary
def _downstream_entry(runs: Sequence[Mapping[str, Any]], dataset: str) -> dict[str, Any]:
    """Per-model medians and every fine-tuning seed's score of one data set."""
    results = [r["downstream"][dataset] for r in runs if dataset in r.get("downstream", {})]
    medians = [_none_to_nan(r["median"]) for r in results]
    return {
        "metric": results[0]["metric"] if results else None,
        "median": describe(medians),
        "medians": medians,
        "scores": [[_none_to_nan(s) for s in r["scores"]] for r in results],
    }


def _none_to_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _stage_downstream(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """{data set: {stage label: spread of the per-model medians}} (``--downstream-stages``)."""
    medians: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for label, results in run.get("downstream_stages", {}).items():
            for dataset, result in results.items():
                values = medians.setdefault(dataset, {}).setdefault(label, [])
                values.append(_none_to_nan(result["median"]))
    return {
        dataset: {label: describe(values) for label, values in sorted(by_label.items())}
        for dataset, by_label in medians.items()
    }


def schedule_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and spread over the seeds of one schedule."""
    datasets = sorted({d for r in runs for d in r.get("downstream", {})})
    return {
        "runs": [r["name"] for r in runs],
        "seeds": [r["seed"] for r in runs],
        "by_seed": seed_values(runs),
        "steps": runs[0]["steps"],
        **{m: describe([r["metrics"][m] for r in runs]) for m in METRICS},
        "tokens": describe([r["tokens"] for r in runs]),
        "wall_s": describe([r["wall_s"] for r in runs]),
        "train_s": describe([r["train_s"] for r in runs]),
        "stage_names": runs[0]["stage_names"],
        "intro": runs[0]["intro"],
        "R_mean": mean_matrix([r["R"] for r in runs]),
        "downstream": {d: _downstream_entry(runs, d) for d in datasets},
        "downstream_stages": _stage_downstream(runs),
        "architecture": architecture_summary(runs),
    }


def seed_values(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, float]]:
    """{quantity: {seed: value}} of every paired quantity: the forgetting metrics, the final
    held-out score of each task (``score/<task>``) and each downstream median
    (``downstream/<data set>``)."""
    out: dict[str, dict[int, float]] = {}
    for run in runs:
        if not run.get("baseline"):  # a baseline's ACC is one other task's score: not paired
            for metric in METRICS:
                out.setdefault(metric, {})[run["seed"]] = run["metrics"][metric]
        for task, value in zip(run.get("tasks", ()), run["R"][-1], strict=False):
            out.setdefault(f"score/{task}", {})[run["seed"]] = value
        for dataset, result in run.get("downstream", {}).items():
            value = _none_to_nan(result["median"])
            out.setdefault(f"downstream/{dataset}", {})[run["seed"]] = value
    return out


def paired_table(schedules: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Paired differences (first - second, on the seeds both ran) of every quantity two
    variants share, for every pair in plan order."""
    names, out = list(schedules), []
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            a, b = schedules[first]["by_seed"], schedules[second]["by_seed"]
            for quantity in [q for q in a if q in b]:
                stats = paired_differences(a[quantity], b[quantity])
                if stats["n"]:
                    out.append({"first": first, "second": second, "quantity": quantity, **stats})
    return out


def architecture_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Cost, speed, conflict and gates of one (schedule, sharing) variant over its seeds."""
    archs = [r["architecture"] for r in runs if r.get("architecture", {}).get("kind")]
    if not archs:
        return {}
    first = archs[0]
    conflict = first["gradient_conflict"].get("most_conflicting")
    pair_means = None
    if conflict:
        key = "|".join(conflict["pair"])
        pair_means = [a["gradient_conflict"]["pairs"].get(key, math.nan) for a in archs]
    return {
        "kind": first["kind"],
        "parameters": first["parameters"],
        "flops_per_token": first["flops_per_token"],
        "tokens_per_s": describe(
            [r["tokens"] / r["train_s"] if r["train_s"] else math.nan for r in runs]
        ),
        "most_conflicting": conflict and {**conflict, "over_seeds": describe(pair_means)},
        "gates": first.get("gates", {}),
        "stitch": first.get("stitch"),
        "distance": first.get("distance"),
    }


def build_summary(
    plan: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], tasks: Sequence[str], metric: str
) -> dict[str, Any]:
    """The whole comparison: per schedule and per run."""
    by_schedule: dict[str, list[Mapping[str, Any]]] = {}
    by_baseline: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:  # a sharing grid's entries are "schedule+sharing" variants
        into = by_baseline if run.get("baseline") else by_schedule
        into.setdefault(run.get("variant", run["schedule"]), []).append(run)
    schedules = {k: schedule_summary(v) for k, v in by_schedule.items()}
    baselines = {k: schedule_summary(v) for k, v in by_baseline.items()}
    scheduled = [r for r in runs if not r.get("baseline")]
    return {
        "group": plan["group"],
        "metric": metric,
        "tasks": list(tasks),
        "schedules": schedules,
        "baselines": baselines,
        "paired": paired_table({**schedules, **baselines}),
        "chance": next((r["chance"] for r in scheduled if r.get("chance")), {}),
        "runs": {r["name"]: dict(r) for r in runs},
        "config": {
            "tasks": list(tasks),
            "iterations_per_task": plan["config"]["schedule"]["iterations_per_task"],
            "seeds": plan["seeds"],
        },
    }


def json_safe(tree: Any) -> Any:
    """NaN/inf -> None so the file is strict JSON."""
    if isinstance(tree, Mapping):
        return {k: json_safe(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [json_safe(v) for v in tree]
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    return tree


# ------------------------------------------------------------------------------- markdown
def fmt_ci(spread: Mapping[str, Any], digits: int = 3) -> str:
    """``mean ± std [low, high]`` with the bootstrap interval where there is one."""
    text = fmt(spread, digits)
    low, high = spread.get("ci_low"), spread.get("ci_high")
    if text == "n/a" or low is None or high is None or math.isnan(low) or math.isnan(high):
        return text
    return f"{text} [{low:.{digits}f}, {high:.{digits}f}]"


def fmt(spread: Mapping[str, Any], digits: int = 3) -> str:
    """``mean ± std`` (or ``n/a`` for an undefined metric)."""
    mean = spread.get("mean")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if spread.get("n", 0) > 1:
        return f"{mean:.{digits}f} ± {spread['std']:.{digits}f}"
    return f"{mean:.{digits}f}"


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def summary_table(summary: Mapping[str, Any]) -> list[str]:
    """The per-schedule markdown table."""
    datasets = sorted({d for s in summary["schedules"].values() for d in s["downstream"]})
    head = ["schedule", "seeds", "steps", "ACC", "BWT", "FWT", "forgetting"]
    head += [f"{d} (median)" for d in datasets] + ["tokens", "wall time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind, s in summary["schedules"].items():
        cells = [kind, str(len(s["runs"])), str(s["steps"])]
        cells += [fmt_ci(s[m]) for m in METRICS]
        cells += [
            fmt_ci(s["downstream"][d]["median"]) if d in s["downstream"] else "-" for d in datasets
        ]
        cells += [fmt(s["tokens"], 0), fmt(s["wall_s"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    for kind, s in summary.get("baselines", {}).items():  # no ACC/BWT: other tasks
        cells = [f"{kind} (baseline)", str(len(s["runs"])), str(s["steps"])] + ["-"] * 4
        cells += [
            fmt_ci(s["downstream"][d]["median"]) if d in s["downstream"] else "-" for d in datasets
        ]
        cells += [fmt(s["tokens"], 0), fmt(s["wall_s"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def baseline_table(summary: Mapping[str, Any]) -> list[str]:
    """One row per baseline (a task trained alone at equal steps): its held-out score."""
    rows = summary.get("baselines", {})
    if not rows:
        return []
    lines = ["| baseline | seeds | steps | task | final held-out score | tokens |"]
    lines.append("|---|---|---|---|---|---|")
    for kind, s in rows.items():
        for quantity, values in s["by_seed"].items():
            if quantity.startswith("score/"):
                score = fmt_ci(describe(list(values.values())))
                task = quantity.removeprefix("score/")
                cells = [kind, str(len(s["runs"])), str(s["steps"]), task, score]
                lines.append("| " + " | ".join([*cells, fmt(s["tokens"], 0)]) + " |")
    return lines


def _label(quantity: str) -> str:
    """``acc`` -> ``ACC``, ``downstream/sst2`` -> ``downstream sst2``."""
    return METRIC_TITLES.get(quantity, quantity.replace("/", " "))


def paired_lines(summary: Mapping[str, Any]) -> list[str]:
    """The verdict on every paired difference of a forgetting metric or downstream median,
    then a table of the per-task final scores' differences."""
    paired = summary.get("paired", [])
    lines = [
        f"- {verdict(p['first'], p['second'], _label(p['quantity']), p)}"
        for p in paired
        if not p["quantity"].startswith("score/")
    ]
    tasks = [t for t in summary["tasks"] if any(p["quantity"] == f"score/{t}" for p in paired)]
    pairs = list(dict.fromkeys((p["first"], p["second"]) for p in paired))
    cells = {(p["first"], p["second"], p["quantity"]): p for p in paired}
    if tasks:
        lines += [
            "",
            "Final held-out score per task, paired difference (first - second) "
            "[95% CI]; * = resolved:",
            "",
        ]
        lines += ["| pair | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
        for first, second in pairs:
            row = [_diff_cell(cells.get((first, second, f"score/{t}"))) for t in tasks]
            lines.append(f"| {first} - {second} | " + " | ".join(row) + " |")
    return lines


def _diff_cell(stats: Mapping[str, Any] | None) -> str:
    if not stats:
        return "-"
    text = f"{stats['mean']:+.3f}"
    if stats["n"] > 1:
        text += f" [{stats['ci_low']:+.3f}, {stats['ci_high']:+.3f}]"
    return text + ("*" if stats["resolved"] else "")


def statistics_text(summary: Mapping[str, Any]) -> list[str]:
    """How the intervals are computed, and how far few seeds let them be trusted."""
    seeds = summary["config"]["seeds"]
    text = (
        f"Intervals: {LEVEL:.0%} percentile bootstrap of the mean over seeds ({RESAMPLES} "
        f"resamples with replacement, Python's random.Random({SEED}): deterministic). "
        "Schedules are compared on paired differences (the same seed index gives every "
        "schedule the same initial weights); a difference is **resolved** when its interval "
        "excludes 0, otherwise **not resolved**."
    )
    if seeds == 1:
        text += " With 1 seed there is no interval, and no difference can be resolved."
    elif seeds <= FEW_SEEDS:
        text += (
            f" With {seeds} seed(s) the bootstrap interval is crude (it can only recombine "
            f"{seeds} values; with 2 it is essentially [min, max]) and understates the "
            "uncertainty: read the min/max of the paired differences beside it, and add seeds "
            "before calling a difference settled."
        )
    return [text]


def runs_table(summary: Mapping[str, Any]) -> list[str]:
    """One row per run."""
    head = ["run", "ACC", "BWT", "FWT", "forgetting", "tokens", "train s", "wall s", "attempts"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, run in summary["runs"].items():
        m = run["metrics"]
        cells = [name] + [_num(m[k]) for k in METRICS]
        cells += [str(run["tokens"]), _num(run["train_s"], 1), _num(run["wall_s"], 1)]
        lines.append("| " + " | ".join(cells + [str(run["attempts"])]) + " |")
    return lines


def gate_findings(gates: Mapping[str, Mapping[str, Sequence[float]]]) -> str:
    """Which tasks lean on which expert: tasks grouped by their top expert at the last gate
    site (e.g. "e0: mlm, capitalization; e2: sentence_distance")."""
    groups: dict[str, list[str]] = {}
    for task, sites in gates.items():
        site = sorted(sites)[-1]
        shares = sites[site]
        top = max(range(len(shares)), key=shares.__getitem__)
        groups.setdefault(f"{site} e{top}", []).append(f"{task} ({shares[top]:.2f})")
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(groups.items())) or "-"


def sharing_table(summary: Mapping[str, Any]) -> list[str]:
    """Per (schedule, sharing) variant: cost, speed relative to hard, gradient conflict and
    what the gates learned; empty when no run used a sharing architecture."""
    rows = {k: s["architecture"] for k, s in summary["schedules"].items() if s["architecture"]}
    if not rows or all(a["kind"] == "hard" for a in rows.values()):
        return []
    head = ["variant", "parameters", "FLOPs/token", "tokens/s", "vs hard"]
    head += ["most conflicting pair (cosine)", "gates: tasks by top expert"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, a in rows.items():
        base = rows.get(variant.split("+")[0] + "+hard")
        speed = a["tokens_per_s"]["mean"]
        ratio = speed / base["tokens_per_s"]["mean"] if base else math.nan
        worst = a["most_conflicting"]
        pair = f"{' / '.join(worst['pair'])} ({worst['cosine']:.3f})" if worst else "n/a"
        cells = [variant, f"{a['parameters']:,}", f"{a['flops_per_token']:,.0f}"]
        cells += [_num(speed, 1), _num(ratio, 2), pair, gate_findings(a["gates"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def stage_downstream_tables(summary: Mapping[str, Any]) -> list[str]:
    """Per data set: each schedule's downstream median after every stage (and final)."""
    out: list[str] = []
    schedules = summary["schedules"]
    datasets = sorted({d for s in schedules.values() for d in s.get("downstream_stages", {})})
    for dataset in datasets:
        labels = sorted(
            {lab for s in schedules.values() for lab in s["downstream_stages"].get(dataset, {})},
            key=lambda lab: int(lab.removeprefix("stage")),
        )
        out += ["", f"### {dataset}: median after each stage", ""]
        out += ["| schedule | " + " | ".join([*labels, "final"]) + " |"]
        out += ["|" + "---|" * (len(labels) + 2)]
        for kind, s in schedules.items():
            by_label = s["downstream_stages"].get(dataset, {})
            cells = [fmt_ci(by_label[lab]) if lab in by_label else "-" for lab in labels]
            final = s["downstream"].get(dataset)
            cells.append(fmt_ci(final["median"]) if final else "-")
            out.append(f"| {kind} | " + " | ".join(cells) + " |")
    return out


def r_matrix_table(summary: Mapping[str, Any], kind: str) -> list[str]:
    """The seed-mean R matrix of one schedule, with each task's introduction stage."""
    s, tasks = summary["schedules"][kind], summary["tasks"]
    intro = [
        f"{t} (intro {i})" if i else f"{t} (never)" for t, i in zip(tasks, s["intro"], strict=True)
    ]
    lines = ["| after | " + " | ".join(intro) + " |", "|" + "---|" * (len(tasks) + 1)]
    labels = ["initial (b)"] + [f"{i + 1}: {n}" for i, n in enumerate(s["stage_names"])]
    for label, row in zip(labels, s["R_mean"], strict=True):
        lines.append(f"| {label} | " + " | ".join(_num(v) for v in row) + " |")
    chance = [chance_value(summary, t) for t in tasks]
    if any(not math.isnan(c) for c in chance):
        lines.append("| chance (majority class) | " + " | ".join(_num(c) for c in chance) + " |")
        above = [_num(f - c, 3) for f, c in zip(s["R_mean"][-1], chance, strict=True)]
        lines.append("| final - chance | " + " | ".join(above) + " |")
    return lines


def chance_value(summary: Mapping[str, Any], task: str) -> float:
    """A task's chance score (NaN where there is none: masked-token tasks)."""
    value = summary.get("chance", {}).get(task, {}).get("value")
    return math.nan if value is None else float(value)


def chance_text(summary: Mapping[str, Any]) -> list[str]:
    """Where each chance level comes from (nothing when the runs had no data report)."""
    chance = summary.get("chance", {})
    parts = [f"{t}: {chance[t]['source']}" for t in summary["tasks"] if t in chance]
    if all(math.isnan(chance_value(summary, t)) for t in summary["tasks"]):
        return []  # no data report (older runs) or only masked-token tasks
    return [
        "",
        "Chance row: the score of always predicting the task's majority class (label counts "
        "of the runs' data_report.json, held-out labels where the report has them); for a "
        "masked-token task, of always predicting the held-out inputs' most frequent token "
        f"(n/a in reports without it). {'; '.join(parts)}.",
    ]


def downstream_r_table(summary: Mapping[str, Any], kind: str) -> list[str]:
    """The downstream R matrix of one schedule: a row per model (each stage-end checkpoint
    kept, then the final export), a column per downstream task; cells: the mean over
    pre-training seeds of the per-model median fine-tuning score."""
    s = summary["schedules"][kind]
    tasks, stages, names = sorted(s["downstream"]), s.get("downstream_stages", {}), s["stage_names"]
    if not tasks:
        return []
    labels = sorted(
        {lab for t in tasks for lab in stages.get(t, {})},
        key=lambda lab: int(lab.removeprefix("stage")),
    )
    lines = ["| after | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
    for lab in labels:
        k = int(lab.removeprefix("stage"))
        cells = [fmt_ci(stages[t][lab]) if lab in stages.get(t, {}) else "-" for t in tasks]
        lines.append(f"| {k}: {names[k - 1]} | " + " | ".join(cells) + " |")
    cells = [fmt_ci(s["downstream"][t]["median"]) for t in tasks]
    lines.append(f"| {len(names)}: {names[-1]} (final) | " + " | ".join(cells) + " |")
    return lines


def markdown(summary: Mapping[str, Any], plots: Sequence[str]) -> str:
    """The text of report.md."""
    metric = summary["metric"]
    out = [
        f"# Schedule comparison: {', '.join(summary['schedules'])}",
        "",
        f"Tasks (introduction order): {', '.join(summary['tasks'])}; "
        f"{summary['config']['iterations_per_task']} iterations per task; "
        f"{summary['config']['seeds']} seed(s); W&B group `{summary['group']}`.",
        f"Score R[i][j] = held-out `{metric}` of task j after stage i (row 0: the initial "
        "model)" + (", negated so that higher is better." if metric in LOWER_IS_BETTER else "."),
        "",
        "## Summary (mean ± sample std over seeds [95% bootstrap interval])",
        "",
        *summary_table(summary),
        "",
        *statistics_text(summary),
        "",
        "ACC = mean final score; BWT = mean (final - score at the end of the task's "
        "introduction stage), negative = forgetting; FWT = mean (score just before the "
        "task is first trained - initial score); forgetting = mean (best score before the "
        "final stage - final score). BWT, FWT and forgetting are n/a where no task "
        "qualifies (multitask: one stage). Downstream: median over fine-tuning seeds per "
        "pre-trained model, then mean ± std over pre-training seeds. Wall time: the "
        "training subprocesses that returned (an attempt killed with the harness is not "
        "counted); train s: the trainer's own step time, kept across resumes. Definitions: "
        "`ernie_cpt/experiments/forgetting.py`.",
        "",
        "## Differences between schedules (paired by seed)",
        "",
        *(paired_lines(summary) or ["n/a: one schedule, or no seed shared."]),
        "",
        "## Runs",
        "",
        *runs_table(summary),
        "",
        "## R matrices (mean over seeds)",
        *chance_text(summary),
        *r_matrix_sections(summary),
        *baseline_section(summary),
    ]
    out += sharing_section(summary)
    stage_tables = stage_downstream_tables(summary)
    if stage_tables:
        out += ["", "## Downstream at stage ends (mean over seeds of the per-model medians)"]
        out += stage_tables
    out += ["", "## Plots", ""]
    out += [f"![{Path(p).stem}](plots/{p})" for p in plots]
    out += ["", "## W&B", "", *_wandb_text(summary["group"])]
    return "\n".join(out) + "\n"


def sharing_section(summary: Mapping[str, Any]) -> list[str]:
    """The sharing-architecture table and its definitions (empty for a plain grid)."""
    sharing = sharing_table(summary)
    if not sharing:
        return []
    return [
        "",
        "## Sharing architectures",
        "",
        *sharing,
        "",
        "Parameters: the whole model; FLOPs/token: forward of encoder + architecture "
        "for one task's route (heads excluded), counted by torch's FlopCounterMode; "
        "tokens/s: training tokens over the trainer's step time (mean over seeds), and "
        "relative to the same schedule with hard sharing; conflict: lowest mean "
        "gradient cosine on the last shared layer over the run's telemetry rows; gates: "
        "tasks grouped by the expert their mean gate weights most (last gate site, "
        "mean over the last logged rows). Definitions: "
        "`ernie_cpt/experiments/architecture.py`; heatmaps: `plots/gates.png`.",
    ]


def r_matrix_sections(summary: Mapping[str, Any]) -> list[str]:
    """Per schedule: its R matrix (with chance rows) and, with --downstream, its downstream
    R matrix."""
    out: list[str] = []
    for kind in summary["schedules"]:
        out += ["", f"### {kind}", "", *r_matrix_table(summary, kind)]
        downstream = downstream_r_table(summary, kind)
        if downstream:
            out += [
                "",
                f"Downstream R matrix of {kind} (median fine-tuning score per model; mean ± std "
                "[95% bootstrap interval] over pre-training seeds):",
                "",
                *downstream,
            ]
    return out


def baseline_section(summary: Mapping[str, Any]) -> list[str]:
    """The baseline table and what it means (nothing without ``--baseline``)."""
    baselines = baseline_table(summary)
    if not baselines:
        return []
    return [
        "",
        "## Baseline: one task alone at equal steps",
        "",
        *baselines,
        "",
        "The baseline trains only its task for as many steps as the schedules (same batch "
        "size, seeds and data); its downstream medians are in the summary table and paired "
        "with every schedule above.",
    ]


def _wandb_text(group: str) -> list[str]:
    return [
        f"Training runs: group `{group}`, job type = schedule; the summary run: job type "
        "`summary`. Offline files: `runs/*/wandb/offline-run-*` and `wandb/offline-run-*`; "
        "upload with `wandb sync runs/*/wandb/offline-run-* wandb/offline-run-*`.",
        "",
        WANDB_PANELS,
    ]


# ---------------------------------------------------------------------------------- plots
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (shorter window at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def stage_boundaries(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Steps after which the stage changes (from metrics.jsonl rows)."""
    return [a["step"] for a, b in zip(rows, rows[1:], strict=False) if a["stage"] != b["stage"]]


def plot_loss_curves(out_dir: Path, summary: Mapping[str, Any], path: Path) -> None:
    """Per schedule: every task's loss over steps (all seeds), stage boundaries dashed."""
    plt = _pyplot()
    kinds, tasks = list(summary["schedules"]), summary["tasks"]
    colors = {t: plt.get_cmap("tab10")(i % 10) for i, t in enumerate(tasks)}
    fig, axes = plt.subplots(len(kinds), 1, figsize=(9, 2.8 * len(kinds)), squeeze=False)
    for ax, kind in zip(axes[:, 0], kinds, strict=True):
        for seed_index, name in enumerate(summary["schedules"][kind]["runs"]):
            rows = read_jsonl(out_dir / "runs" / name / "metrics.jsonl")
            window = max(1, len(rows) // 40)
            for task in tasks:
                points = [(r["step"], r["losses"][task]) for r in rows if task in r["losses"]]
                if points:
                    steps, losses = zip(*points, strict=True)
                    label = task if seed_index == 0 else None
                    ax.plot(
                        steps,
                        moving_average(losses, window),
                        color=colors[task],
                        alpha=0.8 if seed_index == 0 else 0.4,
                        label=label,
                        lw=1,
                    )
            if seed_index == 0:
                for step in stage_boundaries(rows):
                    ax.axvline(step, color="grey", ls="--", lw=0.8)
        ax.set_title(f"{kind}: training loss (dashed: stage boundaries)")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_r_matrices(summary: Mapping[str, Any], path: Path) -> None:
    """Per schedule: the seed-mean R matrix as an annotated heatmap (shared colour scale);
    each task's chance level under its name."""
    plt = _pyplot()
    kinds, tasks = list(summary["schedules"]), summary["tasks"]
    values = [
        v
        for k in kinds
        for row in summary["schedules"][k]["R_mean"]
        for v in row
        if not math.isnan(v)
    ]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    chance = {t: chance_value(summary, t) for t in tasks}
    ticks = [t if math.isnan(chance[t]) else f"{t}\n(chance {chance[t]:.2f})" for t in tasks]
    fig, axes = plt.subplots(
        1, len(kinds), figsize=(4.0 * len(kinds) + 1, 3.9), squeeze=False, layout="constrained"
    )
    for ax, kind in zip(axes[0], kinds, strict=True):
        s = summary["schedules"][kind]
        image = ax.imshow(s["R_mean"], cmap="viridis", vmin=low, vmax=high, aspect="auto")
        ax.set_xticks(range(len(tasks)), ticks, rotation=30, ha="right", fontsize=8)
        labels = ["initial"] + list(s["stage_names"])
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        for i, row in enumerate(s["R_mean"]):
            for j, v in enumerate(row):
                bright = not math.isnan(v) and v > low + 0.6 * (high - low)
                color = "black" if bright else "white"
                ax.text(j, i, _num(v, 2), ha="center", va="center", color=color, fontsize=7)
        ax.set_title(f"{kind}: R ({summary['metric']})", fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist())
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_forgetting_bars(summary: Mapping[str, Any], path: Path) -> None:
    """ACC, BWT, FWT, forgetting per schedule: mean bar, std whisker, seed dots, and the 95%
    bootstrap interval as a black line beside the bar."""
    plt = _pyplot()
    kinds = list(summary["schedules"])
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.2))
    for ax, metric in zip(axes, METRICS, strict=True):
        for x, kind in enumerate(kinds):
            spread = summary["schedules"][kind][metric]
            seeds = [
                summary["runs"][n]["metrics"][metric] for n in summary["schedules"][kind]["runs"]
            ]
            if spread["n"] == 0:
                ax.text(x, 0, "n/a", ha="center", fontsize=8)
                continue
            ax.bar(x, spread["mean"], yerr=spread["std"], capsize=4, alpha=0.6, color=f"C{x}")
            low, high = spread.get("ci_low", math.nan), spread.get("ci_high", math.nan)
            if not (math.isnan(low) or math.isnan(high)):  # the bootstrap interval, offset
                ax.vlines(x + 0.25, low, high, color="k", lw=2)
            ax.plot([x] * len(seeds), seeds, "k.", ms=5)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xticks(range(len(kinds)), kinds, rotation=20, fontsize=8)
        ax.set_title(METRIC_TITLES[metric])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_downstream(summary: Mapping[str, Any], path: Path) -> bool:
    """Downstream scores per schedule and data set (False when there are none)."""
    datasets = sorted({d for s in summary["schedules"].values() for d in s["downstream"]})
    if not datasets:
        return False
    plt = _pyplot()
    kinds = list(summary["schedules"])
    fig, axes = plt.subplots(1, len(datasets), figsize=(4 * len(datasets), 3.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for x, kind in enumerate(kinds):
            entry = summary["schedules"][kind]["downstream"].get(dataset)
            if not entry or entry["median"]["n"] == 0:
                continue
            ax.bar(x, entry["median"]["mean"], alpha=0.3, color=f"C{x}")
            for k, scores in enumerate(entry["scores"]):
                offset = (k - (len(entry["scores"]) - 1) / 2) * 0.15
                ax.plot([x + offset] * len(scores), scores, ".", color="grey", ms=4)
                ax.plot(x + offset, entry["medians"][k], "o", color="C3", ms=6)
        metric = next(
            (
                s["downstream"][dataset]["metric"]
                for s in summary["schedules"].values()
                if dataset in s["downstream"]
            ),
            "",
        )
        ax.set_xticks(range(len(kinds)), kinds, rotation=20, fontsize=8)
        ax.set_title(f"{dataset} ({metric}): median per model (red), seeds (grey)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_gates(summary: Mapping[str, Any], path: Path) -> bool:
    """Per variant with gates: task x expert heatmap of the mean gate weights (last gate
    site); False (nothing written) when no run has gates."""
    gated = {
        k: s["architecture"]["gates"]
        for k, s in summary["schedules"].items()
        if s.get("architecture", {}).get("gates")
    }
    if not gated:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(gated), figsize=(3.6 * len(gated) + 1, 3.6), squeeze=False, layout="constrained"
    )
    for ax, (variant, gates) in zip(axes[0], gated.items(), strict=True):
        tasks = list(gates)
        matrix = [gates[t][sorted(gates[t])[-1]] for t in tasks]
        width = max(len(row) for row in matrix)
        matrix = [row + [math.nan] * (width - len(row)) for row in matrix]
        image = ax.imshow(matrix, cmap="magma", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(width), [f"e{i}" for i in range(width)], fontsize=8)
        ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                color = "black" if not math.isnan(v) and v > 0.6 else "white"
                ax.text(j, i, _num(v, 2), ha="center", va="center", color=color, fontsize=7)
        ax.set_title(f"{variant}: mean gate", fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist())
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_plots(out_dir: Path, summary: Mapping[str, Any]) -> list[str]:
    """Every PNG under ``plots/``; returns the file names written."""
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plot_loss_curves(out_dir, summary, plots / "loss_curves.png")
    plot_r_matrices(summary, plots / "r_matrix.png")
    plot_forgetting_bars(summary, plots / "forgetting.png")
    written = ["loss_curves.png", "r_matrix.png", "forgetting.png"]
    if plot_gates(summary, plots / "gates.png"):
        written.append("gates.png")
    if plot_downstream(summary, plots / "downstream.png"):
        written.append("downstream.png")
    return written


def write_report(out_dir: Path, summary: Mapping[str, Any]) -> Path:
    """summary.json, plots/*.png and report.md in the comparison directory."""
    out_dir = Path(out_dir)
    ckpt.atomic_write_text(out_dir / "summary.json", json.dumps(json_safe(summary), indent=2))
    plots = write_plots(out_dir, summary)
    ckpt.atomic_write_text(out_dir / "report.md", markdown(summary, plots))
    return out_dir / "report.md"


# ---------------------------------------------------------------------------------- W&B
def wandb_tables(summary: Mapping[str, Any]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """(columns, rows) of every table the summary run logs."""
    tasks = summary["tasks"]
    datasets = sorted({d for s in summary["schedules"].values() for d in s["downstream"]})
    cols = ["schedule", "seeds", "steps"]
    cols += [f"{m}_{k}" for m in METRICS for k in ("mean", "std")]
    cols += [f"{d}_median_mean" for d in datasets] + ["tokens_mean", "wall_s_mean"]
    rows = []
    for kind, s in summary["schedules"].items():
        row = [kind, len(s["runs"]), s["steps"]]
        row += [s[m][k] for m in METRICS for k in ("mean", "std")]
        row += [s["downstream"].get(d, {}).get("median", {}).get("mean") for d in datasets]
        rows.append(row + [s["tokens"]["mean"], s["wall_s"]["mean"]])
    tables = {"summary": (cols, rows)}
    run_cols = ["run", "schedule", "seed", *METRICS, "tokens", "train_s", "wall_s"]
    tables["runs"] = (
        run_cols,
        [
            [
                n,
                r.get("variant") or r["schedule"],
                r["seed"],
                *(r["metrics"][m] for m in METRICS),
                r["tokens"],
                r["train_s"],
                r["wall_s"],
            ]
            for n, r in summary["runs"].items()
        ],
    )
    long_rows = [  # a baseline run scores only its own task(s): r["tasks"]
        [kind, r["seed"], i - 1, (["initial"] + r["stage_names"])[i], task, value]
        for r in summary["runs"].values()
        for kind in [r.get("variant") or r["schedule"]]
        for i, row in enumerate(r["R"])
        for task, value in zip(r.get("tasks", tasks), row, strict=True)
    ]
    tables["r_matrix"] = (["schedule", "seed", "stage", "stage_name", "task", "score"], long_rows)
    for kind, s in summary["schedules"].items():
        labels = ["initial"] + list(s["stage_names"])
        tables[f"r_matrix/{kind}"] = (
            ["after", *tasks],
            [[label, *row] for label, row in zip(labels, s["R_mean"], strict=True)],
        )
    return tables


def _nan_to_none(rows: list[list[Any]]) -> list[list[Any]]:
    return [[None if isinstance(v, float) and math.isnan(v) else v for v in row] for row in rows]


@contextlib.contextmanager
def wandb_environment(out_dir: Path, mode: str) -> Iterator[None]:
    """Offline W&B files inside ``out_dir``; every ``WANDB_*`` variable restored afterwards
    (wandb exports ``WANDB_SERVICE``, which later training subprocesses must not inherit)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("WANDB_")}
    os.environ["WANDB_MODE"] = mode  # the init argument alone still makes DNS look-ups
    os.environ.setdefault("WANDB_SILENT", "true")
    for var, sub in (
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_DATA_DIR", "data"),
    ):
        os.environ.setdefault(var, str(out_dir / "wandb" / sub))
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("WANDB_")]:
            del os.environ[key]
        os.environ.update(saved)


def log_wandb_summary(out_dir: Path, summary: Mapping[str, Any], plan: Mapping[str, Any]) -> Path:
    """One W&B run (job type ``summary``) in the comparison's group; returns its local dir."""
    logging_config = plan["config"]["logging"]
    run_id = "summary-" + hashlib.sha256(summary["group"].encode()).hexdigest()[:12]
    for old in (out_dir / "wandb").glob(f"offline-run-*-{run_id}"):
        shutil.rmtree(old, ignore_errors=True)  # a rerun's summary replaces the previous one
    with wandb_environment(out_dir, logging_config["wandb_mode"]):
        return _log_summary_run(out_dir, summary, plan, run_id)


def _log_summary_run(
    out_dir: Path, summary: Mapping[str, Any], plan: Mapping[str, Any], run_id: str
) -> Path:
    import wandb

    logging_config = plan["config"]["logging"]
    run = wandb.init(
        project=logging_config["project"],
        entity=logging_config["entity"],
        group=summary["group"],
        job_type="summary",
        name=f"{summary['group']}/summary",
        id=run_id,
        resume="allow",
        dir=str(out_dir),
        config={
            "schedules": plan["schedules"],
            "seeds": plan["seeds"],
            "metric": summary["metric"],
            "tasks": summary["tasks"],
        },
        settings=wandb.Settings(console="off", x_disable_stats=True),
    )
    try:
        logged: dict[str, Any] = {
            key: wandb.Table(columns=columns, data=_nan_to_none(rows))
            for key, (columns, rows) in wandb_tables(summary).items()
        }
        for png in sorted((out_dir / "plots").glob("*.png")):
            logged[f"plots/{png.stem}"] = wandb.Image(str(png))
        run.log(logged)
        for kind, s in summary["schedules"].items():
            for metric in METRICS:
                if s[metric]["n"]:
                    for key in ("mean", "std", "ci_low", "ci_high"):
                        if not math.isnan(s[metric][key]):
                            run.summary[f"{kind}/{metric}_{key}"] = s[metric][key]
        local = Path(run.dir).parent
    finally:
        run.finish()
    return local
