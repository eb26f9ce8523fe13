"""Forgetting metrics on hand-made score matrices (exact values: multiples of 1/8)."""

from __future__ import annotations

import math
import random

import pytest

from ernie_cpt.experiments.forgetting import (
    average_forgetting,
    backward_transfer,
    forgetting_metrics,
    forward_transfer,
    introduction_stages,
    mean_and_spread,
    mean_matrix,
    score_matrix,
)

# Continual, 3 tasks: row 0 = initial model b, row i = after stage i (which introduces task i).
CONTINUAL = [
    [0.125, 0.25, 0.375],  # b
    [0.75, 0.25, 0.5],  # after stage 1 (task 1 trained)
    [0.5, 0.875, 0.5],  # after stage 2
    [0.25, 0.625, 1.0],  # after stage 3
]


def test_continual_metrics_exact():
    metrics = forgetting_metrics(CONTINUAL, [1, 2, 3])
    assert metrics["acc"] == (0.25 + 0.625 + 1.0) / 3
    # BWT = mean(R3[1] - R1[1], R3[2] - R2[2]) = mean(-0.5, -0.25)
    assert metrics["bwt"] == -0.375
    # FWT = mean(R1[2] - b[2], R2[3] - b[3]) = mean(0, 0.125)
    assert metrics["fwt"] == 0.0625
    # forgetting = mean(max(0.75, 0.5) - 0.25, max(0.25, 0.875) - 0.625) = mean(0.5, 0.25)
    assert metrics["forgetting"] == 0.375


def spec_formulas(R, b):
    """The spec's formulas verbatim, 1-based: R[i] for i = 1..T, b[j] for j = 1..T."""
    T = len(b)
    r = lambda i, j: R[i - 1][j - 1]  # noqa: E731
    acc = sum(r(T, j) for j in range(1, T + 1)) / T
    bwt = sum(r(T, j) - r(j, j) for j in range(1, T)) / (T - 1)
    fwt = sum(r(j - 1, j) - b[j - 1] for j in range(2, T + 1)) / (T - 1)
    forgetting = sum(max(r(stage, j) for stage in range(1, T)) - r(T, j) for j in range(1, T)) / (
        T - 1
    )
    return {"acc": acc, "bwt": bwt, "fwt": fwt, "forgetting": forgetting}


@pytest.mark.parametrize("tasks", [2, 3, 4, 7])
def test_reduces_to_the_spec_when_stage_i_introduces_task_i(tasks):
    rng = random.Random(tasks)
    for _ in range(20):
        matrix = [[rng.randint(0, 64) / 64 for _ in range(tasks)] for _ in range(tasks + 1)]
        ours = forgetting_metrics(matrix, list(range(1, tasks + 1)))
        # FWT's R[j-1][j] with j-1 = 0 is never read (j >= 2), so b sits apart
        spec = spec_formulas(matrix[1:], matrix[0])
        for key in spec:
            assert ours[key] == pytest.approx(spec[key], abs=1e-12), key


def test_multitask_has_only_acc():
    matrix = [[0.0, 0.5], [0.75, 0.25]]
    metrics = forgetting_metrics(matrix, [1, 1])
    assert metrics["acc"] == 0.5
    assert all(math.isnan(metrics[k]) for k in ("bwt", "fwt", "forgetting"))


def test_forgetting_since_introduction_differs_from_the_spec_maximum():
    # two tasks over three stages: task 2 is introduced in stage 2 but scores best before it
    matrix = [[0.0, 0.5], [1.0, 0.75], [0.5, 0.5], [0.25, 0.25]]
    intro = [1, 2]
    assert average_forgetting(matrix, intro) == (0.75 + 0.5) / 2
    assert average_forgetting(matrix, intro, since_introduction=True) == (0.75 + 0.25) / 2
    assert backward_transfer(matrix, intro) == ((0.25 - 1.0) + (0.25 - 0.5)) / 2
    assert forward_transfer(matrix, intro) == 0.75 - 0.5


def test_pairwise_like_schedule_uses_first_training_stage():
    # stages: (A) (B) (A,B) -> intro A=1, B=2, final stage 3
    stage_tasks = [{"A"}, {"B"}, {"A", "B"}]
    intro = introduction_stages(stage_tasks, ["A", "B", "C"])
    assert intro == [1, 2, None]
    matrix = [[0.0, 0.125, 0.5], [0.5, 0.25, 0.5], [0.25, 0.5, 0.5], [0.625, 0.75, 0.5]]
    metrics = forgetting_metrics(matrix, intro)
    assert metrics["acc"] == (0.625 + 0.75 + 0.5) / 3  # untrained C still counts in ACC
    assert metrics["bwt"] == ((0.625 - 0.5) + (0.75 - 0.5)) / 2
    assert metrics["fwt"] == 0.25 - 0.125
    assert metrics["forgetting"] == ((0.5 - 0.625) + (0.5 - 0.75)) / 2


def test_nan_score_propagates_and_shapes_are_checked():
    matrix = [[0.0, math.nan], [0.5, math.nan], [0.25, math.nan]]
    assert math.isnan(backward_transfer(matrix, [1, 1]))
    with pytest.raises(ValueError, match="one per task"):
        backward_transfer([[0.0], [1.0, 2.0]], [1])
    with pytest.raises(ValueError, match="outside"):
        backward_transfer([[0.0], [1.0]], [2])
    with pytest.raises(ValueError, match="initial row"):
        forward_transfer([[0.0]], [1])


def test_score_matrix_mean_and_spread():
    evaluations = [{"a": {"accuracy": 0.5}}, {"a": {"accuracy": 0.75}, "b": {"accuracy": 1.0}}]
    matrix = score_matrix(evaluations, ["a", "b"], "accuracy")
    assert matrix[0][0] == 0.5 and math.isnan(matrix[0][1]) and matrix[1] == [0.75, 1.0]
    spread = mean_and_spread([0.5, 1.0, math.nan])
    assert spread == {"mean": 0.75, "std": math.sqrt(0.125), "min": 0.5, "max": 1.0, "n": 2}
    assert mean_and_spread([math.nan])["n"] == 0
    assert mean_matrix([[[0.0, 1.0]], [[0.5, 0.0]]]) == [[0.25, 0.5]]
