"""Partition of the global sample sequence over ranks and workers."""

from __future__ import annotations

import itertools

import pytest

from adaact_dist.data.partition import (
    epoch_shard_order,
    iter_positions,
    num_batches,
    rank_batch_range,
    rank_range,
    worker_sample_range,
)


@pytest.mark.parametrize("total,world", [(27, 2), (10, 4), (3, 5), (1000, 7)])
def test_rank_ranges_cover_every_position_once(total, world):
    ranges = [rank_range(total, r, world) for r in range(world)]
    positions = [p for start, stop in ranges for p in range(start, stop)]
    assert positions == list(range(total))
    sizes = [stop - start for start, stop in ranges]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("total,world,batch,workers", [(27, 2, 4, 2), (100, 3, 8, 4), (9, 2, 4, 3)])
def test_training_batches_equal_on_every_rank(total, world, batch, workers):
    counts = {
        num_batches(total, rank=r, world_size=world, batch_size=batch, drop_last=True)
        for r in range(world)
    }
    assert counts == {(total // world) // batch}
    for r in range(world):
        start, stop = rank_batch_range(
            total, rank=r, world_size=world, batch_size=batch, drop_last=True
        )
        assert stop - start == (total // world) // batch * batch
        parts = [
            worker_sample_range(start, stop, batch_size=batch, worker=w, num_workers=workers)
            for w in range(workers)
        ]
        assert parts[0][0] == start and parts[-1][1] == stop
        assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
        assert all((b - a) % batch == 0 for a, b in parts)


def test_evaluation_keeps_every_sample_and_short_last_batch():
    total, world, batch = 10, 3, 4
    yielded = 0
    for r in range(world):
        start, stop = rank_batch_range(
            total, rank=r, world_size=world, batch_size=batch, drop_last=False
        )
        yielded += stop - start
        n = num_batches(total, rank=r, world_size=world, batch_size=batch, drop_last=False)
        assert n == -(-(stop - start) // batch)
        parts = [
            worker_sample_range(start, stop, batch_size=batch, worker=w, num_workers=2)
            for w in range(2)
        ]
        assert sum(b - a for a, b in parts) == stop - start
    assert yielded == total


def test_shard_order_seeded_per_epoch_and_positions_wrap():
    a = epoch_shard_order(20, seed=1, epoch=0, shuffle=True)
    assert a == epoch_shard_order(20, seed=1, epoch=0, shuffle=True)
    assert a != epoch_shard_order(20, seed=1, epoch=1, shuffle=True)
    assert a != epoch_shard_order(20, seed=2, epoch=0, shuffle=True)
    assert sorted(a) == list(range(20))
    assert epoch_shard_order(4, seed=1, epoch=3, shuffle=False) == [0, 1, 2, 3]
    order, counts = [2, 0, 1], [3, 1, 2]
    assert list(iter_positions(order, counts, 1, 5)) == [(2, 1), (0, 0), (0, 1), (0, 2)]
    wrapped = list(itertools.islice(iter_positions(order, counts, 4), 4))
    assert wrapped == [(0, 2), (1, 0), (2, 0), (2, 1)]
