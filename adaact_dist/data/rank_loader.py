"""What every backend shares: one rank's slice of a split, and the epoch it is in."""

from __future__ import annotations

import multiprocessing

from adaact_dist.data.config import LoaderConfig
from adaact_dist.data.partition import num_batches, rank_batch_range
from adaact_dist.data.shardset import ShardSet


class RankLoader:
    """Batch count and sample counts of one rank, from :attr:`total_samples`, and the epoch
    that :meth:`set_epoch` selects; backends add iteration."""

    def __init__(self, cfg: LoaderConfig, shardset: ShardSet | None) -> None:
        """``shardset`` is ``None`` for a backend that reads no shards (synthetic), which then
        gives its own :attr:`total_samples` and :attr:`num_classes`."""
        self.cfg = cfg
        self.shardset = shardset
        self.num_skipped = 0
        """Bad samples skipped by this rank so far (all epochs)."""
        # In shared memory, so that persistent worker processes (wds) see set_epoch().
        self._epoch = multiprocessing.Value("q", 0, lock=False)
        self._count_batches()

    @property
    def epoch(self) -> int:
        """The epoch selected by :meth:`set_epoch` (0 before the first call)."""
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's seeded order and augmentation; call before iterating."""
        self._epoch.value = int(epoch)

    def _count_batches(self) -> None:
        """Batches per epoch; a backend whose usable samples change (found bad at load)
        counts again."""
        cfg = self.cfg
        self._len = num_batches(
            self.total_samples,
            rank=cfg.rank,
            world_size=cfg.world_size,
            batch_size=cfg.batch_size,
            drop_last=cfg.drop_last,
        )
        if cfg.drop_last and self._len == 0:
            raise ValueError(
                f"Invalid batch_size={cfg.batch_size}: {self.total_samples} samples over "
                f"world_size={cfg.world_size} ranks give less than one full batch per rank"
            )

    def _batch_range(self) -> tuple[int, int]:
        """The positions of the epoch's sequence this rank yields."""
        cfg = self.cfg
        return rank_batch_range(
            self.total_samples,
            rank=cfg.rank,
            world_size=cfg.world_size,
            batch_size=cfg.batch_size,
            drop_last=cfg.drop_last,
        )

    def __len__(self) -> int:
        return self._len

    @property
    def num_samples(self) -> int:
        """Samples this rank yields per epoch (before any bad ones are skipped)."""
        start, stop = self._batch_range()
        return stop - start

    @property
    def total_samples(self) -> int:
        """Usable samples in the split, all ranks together."""
        assert self.shardset is not None, "a backend without shards gives its own count"
        return self.shardset.total

    @property
    def num_classes(self) -> int | None:
        assert self.shardset is not None, "a backend without shards gives its own classes"
        return self.shardset.num_classes
