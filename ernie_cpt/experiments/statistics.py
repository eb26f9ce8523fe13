"""Seed statistics of a schedule comparison: bootstrap intervals, paired differences, chance.

A comparison trains every schedule on the same K seeds (seed s gives every schedule the same
initial weights and data order), so two schedules are compared on their **paired**
differences d_s = metric(A, s) - metric(B, s), not on two independent means.

Intervals are **percentile bootstrap** intervals of the mean (Efron & Tibshirani 1993,
ch. 13): draw ``resamples`` samples of size K with replacement from the K values (Python's
``random.Random(seed).choices``, so the same values and seed give the same interval on every
machine), take each resample's mean, and report the (1 - level)/2 and (1 + level)/2
percentiles of those means (linear interpolation between order statistics, numpy's default
"linear" method). A difference is **resolved** when its interval excludes 0.

With 2-3 seeds such an interval is crude: a bootstrap can only recombine the few values there
are (with 2 seeds the 95% interval is essentially [min, max]), so it understates the
uncertainty. The report therefore also gives the min and max of the paired differences and
says how many seeds each interval rests on.

Chance levels (``chance_levels``) come from a run's ``data_report.json``: the majority class's
share of a task's label counts (held-out counts where the report has them, otherwise the
training split's, which is drawn from the same documents), as the score of always predicting
that class. Tasks whose counts are not classes (masked-token tasks: their counts include
``tokens``) have no cheap chance level and get NaN ("n/a").
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

LEVEL = 0.95
RESAMPLES = 10_000
SEED = 0
FEW_SEEDS = 3  # up to this many seeds an interval is called crude in the report


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of ascending values, interpolating linearly between
    order statistics at position q * (n - 1) (numpy's ``method="linear"``)."""
    if not sorted_values:
        return math.nan
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def bootstrap_interval(
    values: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaNs dropped); (nan, nan)
    for fewer than two defined values (one value has no spread to resample)."""
    defined = [v for v in values if not math.isnan(v)]
    if len(defined) < 2:
        return math.nan, math.nan
    rng = random.Random(seed)
    k = len(defined)
    means = sorted(statistics.fmean(rng.choices(defined, k=k)) for _ in range(resamples))
    tail = (1.0 - level) / 2.0
    return percentile(means, tail), percentile(means, 1.0 - tail)


def describe(values: Sequence[float], seed: int = SEED) -> dict[str, float | int]:
    """Mean, sample std, min, max, n of the defined values and the bootstrap interval
    (``ci_low``, ``ci_high``) of their mean."""
    defined = [v for v in values if not math.isnan(v)]
    if not defined:
        nan = math.nan
        return {
            "mean": nan,
            "std": nan,
            "min": nan,
            "max": nan,
            "n": 0,
            "ci_low": nan,
            "ci_high": nan,
        }
    low, high = bootstrap_interval(defined, seed=seed)
    return {
        "mean": statistics.fmean(defined),
        "std": statistics.stdev(defined) if len(defined) > 1 else 0.0,
        "min": min(defined),
        "max": max(defined),
        "n": len(defined),
        "ci_low": low,
        "ci_high": high,
    }


def paired_differences(
    a: Mapping[int, float], b: Mapping[int, float], seed: int = SEED
) -> dict[str, Any]:
    """a - b on every seed both define (keys: seed index); their ``describe`` plus the
    seeds used, the differences themselves and whether the interval excludes 0."""
    seeds = sorted(s for s in a if s in b and not math.isnan(a[s]) and not math.isnan(b[s]))
    diffs = [a[s] - b[s] for s in seeds]
    stats = describe(diffs, seed=seed)
    return {**stats, "seeds": seeds, "differences": diffs, "resolved": is_resolved(stats)}


def is_resolved(stats: Mapping[str, Any]) -> bool:
    """The interval exists and excludes 0."""
    low, high = stats.get("ci_low", math.nan), stats.get("ci_high", math.nan)
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return False
    return low > 0 or high < 0


def verdict(first: str, second: str, metric: str, stats: Mapping[str, Any]) -> str:
    """One plain sentence on a paired difference (``first`` - ``second``)."""
    n = stats["n"]
    if n == 0:
        return f"{metric}: {first} vs {second}: no seed defines both (n/a)."
    if n == 1:
        return (
            f"{metric}: {first} - {second} = {stats['mean']:+.4f} on 1 seed: not resolved "
            "(one seed gives no interval)."
        )
    crude = " (crude: few seeds)" if n <= FEW_SEEDS else ""
    span = (
        f"{metric}: {first} - {second} = {stats['mean']:+.4f}, 95% CI "
        f"[{stats['ci_low']:+.4f}, {stats['ci_high']:+.4f}]{crude}, "
        f"min/max {stats['min']:+.4f}/{stats['max']:+.4f} over {n} seeds"
    )
    if stats["resolved"]:
        better = first if stats["mean"] > 0 else second
        return f"{span}: resolved, {better} higher."
    return f"{span}: not resolved (the interval includes 0)."


# ----------------------------------------------------------------------------- chance
def class_counts(labels: Mapping[str, int]) -> dict[str, int] | None:
    """The per-class counts inside a data report's ``labels`` entry, or None when the
    counts are not classes (a ``tokens`` count: masked-token tasks). Keys ``group=value``
    (sentence_reordering: ``segments=n`` and ``order=...``) are grouped; the finest group
    (most keys: the label itself) is used."""
    if not labels or "tokens" in labels:
        return None
    groups: dict[str, dict[str, int]] = {}
    for key, count in labels.items():
        prefix = key.split("=", 1)[0] if "=" in key else ""
        groups.setdefault(prefix, {})[key] = int(count)
    return max(groups.values(), key=len)


def chance_level(entry: Mapping[str, Any], metric: str = "accuracy") -> tuple[float, str]:
    """(chance score, where it comes from) of one task's data report entry. ``accuracy``:
    the majority class's share; ``loss``: minus the label entropy in nats (the loss of
    predicting the class prior; negated like the scores). Else NaN."""
    held_out = entry.get("heldout_labels")
    counts = class_counts(held_out or entry.get("labels") or {})
    split = "held-out" if held_out else "train"
    if counts is None:
        share = entry.get("heldout_top_token_share")
        if share is not None and metric == "accuracy":
            return float(share), "most frequent token (held-out inputs)"
        return math.nan, "n/a (not a classification: masked tokens)"
    total = sum(counts.values())
    if total == 0:
        return (1.0 / len(counts), "1/classes") if metric == "accuracy" else (math.nan, "n/a")
    if metric == "accuracy":
        return max(counts.values()) / total, f"majority class ({split} labels)"
    if metric == "loss":
        shares = [c / total for c in counts.values() if c]
        return sum(p * math.log(p) for p in shares), f"class prior ({split} labels)"
    return math.nan, "n/a"


def chance_levels(
    report: Mapping[str, Any] | None, tasks: Sequence[str], metric: str = "accuracy"
) -> dict[str, dict[str, Any]]:
    """{task: {"value": chance score or NaN, "source": text}} from a ``data_report.json``."""
    entries = (report or {}).get("tasks", {})
    out = {}
    for task in tasks:
        if task in entries:
            value, source = chance_level(entries[task], metric)
        else:
            value, source = math.nan, "n/a (no data report entry)"
        out[task] = {"value": value, "source": source}
    return out
