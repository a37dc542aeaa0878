"""How one epoch of samples is split over ranks and loader workers.

Both backends (webdataset and DALI) read the same global sequence: the shards in a seeded,
per-epoch order, their samples in stored order. Rank ``r`` of ``W`` owns the contiguous
positions ``[floor(r*N/W), floor((r+1)*N/W))`` of that sequence, which is exactly how DALI's
readers split a data set with ``shard_id``/``num_shards``. Splitting by sample positions instead
of by whole shards is what lets every rank yield the same number of training batches whatever
the shard count: whole-shard splits leave ranks with unequal data, and the rank that runs out
first hangs the others at the next collective.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from adaact_dist._seeds import derive_seed

__all__ = [
    "epoch_shard_order",
    "rank_range",
    "num_batches",
    "rank_batch_range",
    "worker_sample_range",
    "iter_positions",
]


def epoch_shard_order(num_shards: int, *, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """Shard visiting order for one epoch: seeded and identical on every rank."""
    order = list(range(num_shards))
    if shuffle:
        random.Random(derive_seed(seed, "shard-order", epoch=epoch)).shuffle(order)
    return order


def rank_range(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """Positions ``[start, stop)`` of the global sequence that belong to ``rank`` (DALI's split)."""
    return total * rank // world_size, total * (rank + 1) // world_size


def num_batches(total: int, *, rank: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """Batches this rank yields per epoch.

    With ``drop_last`` every rank yields ``(total // world_size) // batch_size`` full batches: the
    same number on every rank. Without it every sample of the rank's range is yielded once, the
    last batch may be short, and ranks may differ by one batch.
    """
    if drop_last:
        return (total // world_size) // batch_size
    start, stop = rank_range(total, rank, world_size)
    return -(-(stop - start) // batch_size)


def rank_batch_range(
    total: int, *, rank: int, world_size: int, batch_size: int, drop_last: bool
) -> tuple[int, int]:
    """The sample positions this rank actually yields: its range, cut to whole batches if
    ``drop_last``."""
    start, stop = rank_range(total, rank, world_size)
    if drop_last:
        n = num_batches(
            total, rank=rank, world_size=world_size, batch_size=batch_size, drop_last=True
        )
        stop = start + n * batch_size
    return start, stop


def worker_sample_range(
    start: int, stop: int, *, batch_size: int, worker: int, num_workers: int
) -> tuple[int, int]:
    """Split a rank's positions ``[start, stop)`` between workers in whole batches.

    Worker ``w`` gets a contiguous run of batches; the counts differ by at most one, and only the
    worker holding the rank's last batch can get a short one.
    """
    batches = -(-(stop - start) // batch_size)
    first = batches * worker // num_workers
    last = batches * (worker + 1) // num_workers
    return min(stop, start + first * batch_size), min(stop, start + last * batch_size)


def iter_positions(
    order: Sequence[int], counts: Sequence[int], start: int, stop: int | None = None
) -> Iterator[tuple[int, int]]:
    """Yield ``(shard, sample_in_shard)`` for global positions ``start, start+1, ...``.

    ``order`` is the epoch's shard order and ``counts[s]`` the samples of shard ``s``. With
    ``stop=None`` the sequence wraps around forever (used to draw replacements for bad samples).
    """
    total = sum(counts[s] for s in order)
    if total == 0:
        return
    pos = start
    while stop is None or pos < stop:
        p = pos % total
        for s in order:
            if p < counts[s]:
                break
            p -= counts[s]
        # Walk the rest of this shard without re-searching for every sample.
        n = counts[s] - p
        if stop is not None:
            n = min(n, stop - pos)
        for i in range(p, p + n):
            yield s, i
        pos += n
