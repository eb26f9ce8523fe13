"""Forgetting metrics of a continual-learning run: ACC, BWT, FWT and average forgetting.

The score matrix ``R`` has one row per evaluation: row 0 is the initial model (the
baseline ``b``), row ``i`` (1..S) the evaluation after stage ``i`` of S. Columns are tasks.
Scores are "higher is better" (the comparison uses each task's held-out ``accuracy``;
masked-token accuracy for masking tasks). Following the continual-learning literature
(Lopez-Paz & Ranzato 2017, GEM; Chaudhry et al. 2018, RWalk) as written in the spec:

    ACC = mean_j R[T][j]
    BWT = mean_{j<T} (R[T][j] - R[j][j])
    FWT = mean_{j>=2} (R[j-1][j] - b[j])
    average forgetting = mean_{j<T} (max_{l<T} R[l][j] - R[T][j])

Those formulas assume stage ``j`` introduces task ``j``. Our schedules need not: multitask
has one stage, pairwise has 2T+1. So every formula is written with

- ``intro(j)``: the 1-based stage in which task ``j`` is first trained, and
- ``F``: the final stage (``S``, the last row):

    ACC        = mean over tasks j of R[F][j]
    BWT        = mean over j with intro(j) < F of (R[F][j] - R[intro(j)][j])
    FWT        = mean over j with intro(j) > 1 of (R[intro(j) - 1][j] - b[j])
    forgetting = mean over j with intro(j) < F of (max_{1 <= l < F} R[l][j] - R[F][j])

For ``continual`` and ``cmtl`` (intro(j) = j, F = T) these are exactly the spec's formulas.
Where no task qualifies the value is undefined and returned as NaN: a ``multitask`` run (one
stage; every task introduced in the final stage) has no BWT, FWT or forgetting. Tasks never
trained are left out of BWT, FWT and forgetting (they still count in ACC). A NaN score (a
task without held-out metrics) propagates into every metric that reads it.

The spec's forgetting takes the maximum over every stage before the last, including stages
before the task was introduced; ``since_introduction=True`` restricts it to
``intro(j) <= l < F`` (RWalk's definition). The two agree whenever a task's score does not
fall once it is trained. Everything here is pure Python on lists.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping, Sequence

Matrix = Sequence[Sequence[float]]

# Held-out metrics where lower is better; as scores they are negated.
LOWER_IS_BETTER = ("loss", "perplexity")


def _mean(values: Sequence[float]) -> float:
    """Mean, or NaN for no values (an undefined metric)."""
    return sum(values) / len(values) if values else math.nan


def introduction_stages(
    stage_tasks: Sequence[Collection[str]], tasks: Sequence[str]
) -> list[int | None]:
    """1-based stage in which each task is first trained (None: never trained)."""
    out: list[int | None] = []
    for task in tasks:
        found = [i + 1 for i, trained in enumerate(stage_tasks) if task in trained]
        out.append(found[0] if found else None)
    return out


def _check(matrix: Matrix, intro: Sequence[int | None]) -> int:
    """Validate shapes; returns F, the index of the final row."""
    if len(matrix) < 2:
        raise ValueError("R needs the initial row and at least one stage row")
    width = len(matrix[0])
    if any(len(row) != width for row in matrix) or len(intro) != width:
        raise ValueError(f"R rows and intro must all have {width} entries (one per task)")
    final = len(matrix) - 1
    for stage in intro:
        if stage is not None and not 1 <= stage <= final:
            raise ValueError(f"introduction stage {stage} outside 1..{final}")
    return final


def average_accuracy(matrix: Matrix) -> float:
    """ACC: mean score of every task after the final stage."""
    return _mean(list(matrix[-1]))


def backward_transfer(matrix: Matrix, intro: Sequence[int | None]) -> float:
    """BWT: mean change from the end of a task's introduction stage to the end of training."""
    final = _check(matrix, intro)
    return _mean(
        [
            matrix[final][j] - matrix[stage][j]
            for j, stage in enumerate(intro)
            if stage is not None and stage < final
        ]
    )


def forward_transfer(matrix: Matrix, intro: Sequence[int | None]) -> float:
    """FWT: mean gain over the initial model just before a task is first trained."""
    _check(matrix, intro)
    return _mean(
        [
            matrix[stage - 1][j] - matrix[0][j]
            for j, stage in enumerate(intro)
            if stage is not None and stage > 1
        ]
    )


def average_forgetting(
    matrix: Matrix, intro: Sequence[int | None], since_introduction: bool = False
) -> float:
    """Mean drop from a task's best score before the final stage to its final score."""
    final = _check(matrix, intro)
    drops = []
    for j, stage in enumerate(intro):
        if stage is None or stage >= final:
            continue
        first = stage if since_introduction else 1
        best = max(matrix[row][j] for row in range(first, final))
        drops.append(best - matrix[final][j])
    return _mean(drops)


def forgetting_metrics(
    matrix: Matrix, intro: Sequence[int | None], since_introduction: bool = False
) -> dict[str, float]:
    """ACC, BWT, FWT and average forgetting of one run."""
    return {
        "acc": average_accuracy(matrix),
        "bwt": backward_transfer(matrix, intro),
        "fwt": forward_transfer(matrix, intro),
        "forgetting": average_forgetting(matrix, intro, since_introduction),
    }


def score_matrix(
    evaluations: Sequence[Mapping[str, Mapping[str, float]]], tasks: Sequence[str], metric: str
) -> list[list[float]]:
    """R from per-evaluation metrics ({task: {metric: value}}); a missing value is NaN."""
    return [
        [float(evaluation.get(task, {}).get(metric, math.nan)) for task in tasks]
        for evaluation in evaluations
    ]


def mean_and_spread(values: Sequence[float]) -> dict[str, float | int]:
    """Mean, sample standard deviation (0 for one value), min and max of the defined values.

    NaN values (undefined metrics) are dropped; ``n`` says how many remain.
    """
    defined = [v for v in values if not math.isnan(v)]
    if not defined:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {
        "mean": statistics.fmean(defined),
        "std": statistics.stdev(defined) if len(defined) > 1 else 0.0,
        "min": min(defined),
        "max": max(defined),
        "n": len(defined),
    }


def mean_matrix(matrices: Sequence[Matrix]) -> list[list[float]]:
    """Element-wise mean of equally shaped matrices (one per seed)."""
    if not matrices:
        return []
    rows, cols = len(matrices[0]), len(matrices[0][0])
    if any(len(m) != rows or any(len(r) != cols for r in m) for m in matrices):
        raise ValueError("matrices to average must have the same shape")
    return [[statistics.fmean(m[i][j] for m in matrices) for j in range(cols)] for i in range(rows)]
