"""Seed statistics: percentile, bootstrap interval, paired differences, verdicts, chance levels.

Expected values are worked out by hand: bootstrap means of tiny samples take few values
with known binomial probabilities, so their percentiles are known."""

from __future__ import annotations

import math

import pytest

from ernie_cpt.experiments.statistics import (
    bootstrap_interval,
    chance_levels,
    class_counts,
    describe,
    paired_differences,
    percentile,
    verdict,
)


def test_percentile_interpolates_linearly():
    # position q * (n - 1): 0.25 * 3 = 0.75 -> 1 + 0.75 * (2 - 1)
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.25) == 1.75
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0
    assert percentile([5.0], 0.3) == 5.0


def test_bootstrap_interval_matches_hand_percentiles():
    # Resampling [0, 0, 3] three times: the mean is k (k = number of 3s drawn),
    # P(k) = C(3,k) (1/3)^k (2/3)^(3-k) = 8/27, 12/27, 6/27, 1/27.
    # P(mean <= 0) = 0.296 > 0.025 -> lower percentile 0;
    # P(mean <= 2) = 26/27 = 0.963 < 0.975 -> upper 97.5% percentile 3; > 0.95 -> upper 95% is 2.
    assert bootstrap_interval([0.0, 0.0, 3.0], seed=7) == (0.0, 3.0)
    assert bootstrap_interval([0.0, 0.0, 3.0], level=0.90, seed=7) == (0.0, 2.0)
    # two values: means 0, 0.5, 1 with P 1/4, 1/2, 1/4 -> the 95% interval is [min, max]
    assert bootstrap_interval([0.0, 1.0], seed=1) == (0.0, 1.0)
    # a 40% interval: the 30th and 70th percentiles fall in the 0.5 block (P 0.25..0.75)
    assert bootstrap_interval([0.0, 1.0], level=0.4, seed=1) == (0.5, 0.5)


def test_bootstrap_is_deterministic_and_needs_two_values():
    values = [0.31, 0.35, 0.29, 0.4, 0.33]
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)
    low, high = bootstrap_interval([0.5])
    assert math.isnan(low) and math.isnan(high)
    assert describe([math.nan, 0.5])["n"] == 1


def test_paired_differences_exact():
    a = {0: 0.5, 1: 0.75, 2: 0.25, 3: math.nan}
    b = {0: 0.25, 1: 0.5, 2: 0.5, 4: 0.0}
    paired = paired_differences(a, b)
    assert paired["seeds"] == [0, 1, 2]  # seed 3 undefined in a, seed 4 absent from a
    assert paired["differences"] == [0.25, 0.25, -0.25]
    assert paired["mean"] == pytest.approx(0.25 / 3)
    assert (paired["min"], paired["max"]) == (-0.25, 0.25)
    assert paired["resolved"] is False  # a resample of three -0.25s has mean -0.25 < 0


def test_resolved_and_unresolved_wording():
    a = {0: 0.75, 1: 0.5, 2: 0.625}
    b = {0: 0.5, 1: 0.25, 2: 0.5}  # differences 0.25, 0.25, 0.125: every resample > 0
    paired = paired_differences(a, b)
    assert paired["resolved"] is True
    assert paired["ci_low"] == 0.125 and paired["ci_high"] == 0.25
    text = verdict("cmtl", "continual", "ACC", paired)
    assert text == (
        "ACC: cmtl - continual = +0.2083, 95% CI [+0.1250, +0.2500] (crude: few seeds), "
        "min/max +0.1250/+0.2500 over 3 seeds: resolved, cmtl higher."
    )
    flipped = verdict("continual", "cmtl", "ACC", paired_differences(b, a))
    assert flipped.endswith("resolved, cmtl higher.")
    unresolved = paired_differences({0: 0.5, 1: 0.25}, {0: 0.25, 1: 0.5})
    assert verdict("a", "b", "BWT", unresolved).endswith("not resolved (the interval includes 0).")
    one = paired_differences({0: 0.5}, {0: 0.25})
    assert verdict("a", "b", "ACC", one) == (
        "ACC: a - b = +0.2500 on 1 seed: not resolved (one seed gives no interval)."
    )


def test_chance_levels_from_a_hand_made_data_report():
    report = {
        "tasks": {
            "capitalization": {"labels": {"lowercase": 300, "capitalised": 100}},
            "sentence_reordering": {
                "labels": {
                    "segments=1": 6,
                    "segments=2": 4,
                    "order=0": 6,
                    "order=01": 1,
                    "order=10": 3,
                }
            },
            "knowledge_masking": {"labels": {"basic": 40, "phrase": 3, "tokens": 50}},
            "mlm": {
                "labels": {"tokens": 50},
                "heldout_labels": {"tokens": 20},
                "heldout_top_token_share": 0.07,
            },
            "ir_relevance": {"labels": {"strong": 0, "weak": 0, "irrelevant": 0}},
            "sentence_distance": {
                "labels": {"adjacent": 1, "same_document": 1, "other_document": 1},
                "heldout_labels": {"adjacent": 2, "same_document": 1, "other_document": 1},
            },
        }
    }
    tasks = [
        "capitalization",
        "sentence_reordering",
        "knowledge_masking",
        "ir_relevance",
        "sentence_distance",
        "mlm",
        "missing",
    ]
    levels = chance_levels(report, tasks)
    assert levels["capitalization"] == {"value": 0.75, "source": "majority class (train labels)"}
    assert levels["sentence_reordering"]["value"] == 0.6  # order=0: 6 of 10
    assert math.isnan(levels["knowledge_masking"]["value"])
    assert levels["knowledge_masking"]["source"].startswith("n/a")
    assert levels["ir_relevance"] == {"value": 1 / 3, "source": "1/classes"}
    assert levels["mlm"] == {"value": 0.07, "source": "most frequent token (held-out inputs)"}
    assert levels["sentence_distance"] == {
        "value": 0.5,
        "source": "majority class (held-out labels)",
    }
    assert math.isnan(levels["missing"]["value"])
    # loss: minus the entropy of the prior, 0.75/0.25 -> 0.75 ln 0.75 + 0.25 ln 0.25
    by_loss = chance_levels(report, ["capitalization"], metric="loss")
    assert by_loss["capitalization"]["value"] == pytest.approx(-0.5623351446188083)
    assert class_counts({"order=0": 1, "segments=1": 1, "order=01": 2}) == {
        "order=0": 1,
        "order=01": 2,
    }


def test_top_token_share_skips_special_tokens():
    import datasets

    from ernie_cpt.data.prepare import top_token_share

    examples = datasets.Dataset.from_dict({"input_ids": [[1, 5, 5, 7, 2], [1, 5, 8, 2], [1, 2]]})
    # non-special tokens: 5, 5, 7, 5, 8 -> token 5 is 3 of 5; ids 1 and 2 are special
    assert top_token_share(examples, [1, 2]) == 0.6
    assert top_token_share(examples.select([2]), [1, 2]) is None
    assert top_token_share(examples.select([]), [1, 2]) is None


def test_heldout_evaluation_order_is_a_fixed_permutation_shared_by_ranks():
    from ernie_cpt.training.heldout_eval import eval_batches, eval_order

    order = eval_order(100, 100)
    assert sorted(order) == list(range(100)) and order != list(range(100))
    assert eval_order(100, 10) == order[:10] and eval_order(100, 10) == eval_order(100, 10)
    data = list(range(100))
    one = eval_batches(data, 4, 3, 0, 1)
    assert [len(b) for b in one] == [4, 4, 4] and sum(one, []) == order[:12]
    two = [eval_batches(data, 4, 3, r, 2) for r in (0, 1)]
    # two ranks read disjoint strides of the same first 24 indices
    assert sorted(sum(two[0] + two[1], [])) == sorted(order[:24])
    assert sum(two[0], []) == order[:24][0::2]
