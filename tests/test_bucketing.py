"""Length bucketing of the training streams: which batches form, and that resume still holds."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset

from ernie_cpt.data.task_stream import TaskStream, example_lengths
from pretrain_tasks.base import stable_seed


def dataset_of_lengths(lengths: list[int]) -> Dataset:
    """Example i has input_ids of length lengths[i] (every token = i, to read back i)."""
    return Dataset.from_dict({"input_ids": [[i] * n for i, n in enumerate(lengths)]})


def batches(stream: TaskStream, count: int) -> list[list[int]]:
    return [stream.next_indices() for _ in range(count)]


def test_lengths_come_from_arrow_offsets_and_follow_a_selection():
    data = dataset_of_lengths([3, 1, 4, 1, 5, 9, 2, 6])
    assert example_lengths(data).tolist() == [3, 1, 4, 1, 5, 9, 2, 6]
    assert example_lengths(data.select([5, 0, 2])).tolist() == [9, 3, 4]
    assert example_lengths({"input_ids": [[1, 2], [3]]}).tolist() == [2, 1]


def test_a_window_is_cut_into_runs_of_sorted_lengths():
    # 12 examples, length = index + 1; batch 4, windows of 3 batches = the whole epoch:
    # every batch is one of the three sorted runs {0-3}, {4-7}, {8-11}, each exactly once.
    stream = TaskStream(dataset_of_lengths(list(range(1, 13))), "t", 4, seed=7, bucket_size=3)
    for _epoch in range(3):
        got = [frozenset(b) for b in batches(stream, 3)]
        assert sorted(got, key=min) == [
            frozenset(range(0, 4)),
            frozenset(range(4, 8)),
            frozenset(range(8, 12)),
        ]
    # the order of the runs is shuffled (seeded): not always ascending over 3 epochs
    stream.load_state({"epoch": 0, "position": 0})
    firsts = [min(batches(stream, 3)[0]) for _ in range(3)]
    assert firsts != [0, 0, 0]


def test_an_epoch_visits_the_same_examples_as_without_bucketing():
    lengths = [int(x) for x in np.random.default_rng(0).integers(1, 100, 50)]
    data = dataset_of_lengths(lengths)
    plain = TaskStream(data, "t", 5, seed=3)
    bucketed = TaskStream(data, "t", 5, seed=3, bucket_size=4)
    for epoch in range(3):
        assert sorted(plain.order(epoch)) == sorted(bucketed.order(epoch))
    # ... in the same windows of 20: bucketing only reorders inside a window
    for start in range(0, 40, 20):
        window = plain.order(1)[start : start + 20]
        assert sorted(bucketed.order(1)[start : start + 20]) == sorted(window)


def test_the_grid_realigns_after_an_epoch_tail():
    # 10 examples, batch 4: batch 2 takes the epoch-0 tail (2) + epoch 1's first 2 examples;
    # epoch 1's grid starts after those 2, so batches 3 and 4 are sorted runs of the other 8.
    stream = TaskStream(dataset_of_lengths(list(range(1, 11))), "t", 4, seed=1, bucket_size=10)
    got = batches(stream, 5)
    permutation = np.random.default_rng(stable_seed(1, "t", 1)).permutation(10)
    rest = sorted(int(i) for i in permutation[2:])
    assert got[2][2:] == [int(i) for i in permutation[:2]]
    assert sorted([sorted(got[3]), sorted(got[4])]) == [rest[:4], rest[4:]]
    assert stream.state() == {"epoch": 2, "position": 0}


@pytest.mark.parametrize("world_size", [1, 2])
def test_padding_share_falls_and_resume_reads_the_same_batches(world_size):
    lengths = [int(x) for x in np.random.default_rng(1).integers(8, 129, 2000)]
    data = dataset_of_lengths(lengths)

    def padded_share(bucket_size: int, rank: int) -> float:
        stream = TaskStream(data, "t", 16, 5, rank, world_size, bucket_size)
        real = cells = 0
        for b in batches(stream, 150):  # past an epoch at world size 2... and 1
            sizes = [lengths[i] for i in b]
            real, cells = real + sum(sizes), cells + max(sizes) * len(sizes)
        return 1 - real / cells

    for rank in range(world_size):
        assert padded_share(0, rank) > 0.3  # uniform 8-128 in random batches of 16
        assert padded_share(64, rank) < 0.02
    first = TaskStream(data, "t", 16, 5, 0, world_size, 64)
    batches(first, 70)
    resumed = TaskStream(data, "t", 16, 5, 0, world_size, 64)
    resumed.load_state(first.state())
    assert batches(resumed, 90) == batches(first, 90)
    assert resumed.peek((0, 32)) == first.peek((0, 32))  # a pure function of the cursor
