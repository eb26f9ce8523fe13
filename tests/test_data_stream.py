"""TaskStream: deterministic epochs, resumable positions, disjoint rank shards."""

from __future__ import annotations

import datasets

from ernie_cpt.data.task_stream import TaskStream


def dataset(n=10):
    return datasets.Dataset.from_dict({"value": list(range(n))})


def take(stream, batches):
    return [stream.next_examples()["value"] for _ in range(batches)]


def test_epochs_are_permutations_and_wrap_into_the_next():
    stream = TaskStream(dataset(10), "t", batch_size=4, seed=1)
    batches = take(stream, 5)  # 20 examples: two full epochs
    assert sorted(sum(batches, [])[:10]) == list(range(10))
    assert sorted(sum(batches, [])[10:]) == list(range(10))
    assert sum(batches, [])[:10] != sum(batches, [])[10:]  # a new order each epoch
    assert stream.state() == {"epoch": 2, "position": 0}


def test_resume_from_state_reads_the_same_batches():
    reference = TaskStream(dataset(), "t", 3, seed=5)
    expected = take(reference, 7)
    first = TaskStream(dataset(), "t", 3, seed=5)
    head = take(first, 3)
    second = TaskStream(dataset(), "t", 3, seed=5)
    second.load_state(first.state())
    assert head + take(second, 4) == expected


def test_ranks_read_disjoint_shards_of_each_epoch():
    shards = [
        TaskStream(dataset(11), "t", 5, seed=0, rank=r, world_size=2).next_examples()["value"]
        for r in range(2)
    ]
    assert not set(shards[0]) & set(shards[1])
    assert len(shards[0]) == len(shards[1]) == 5
