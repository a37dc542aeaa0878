"""webdataset shards -> timm transforms in DataLoader workers -> normalised batches on the device.

Why not ``webdataset.WebDataset`` with ``split_by_node``/``split_by_worker``: those hand whole
shards to ranks and workers, so with (say) 3 shards, 2 ranks and 2 workers each, ranks get
unequal data and the one that finishes first waits forever in the next collective. Here the
global sample sequence is split by position (:mod:`adaact_dist.data.partition`), and each worker
seeks straight to its first sample with the shard's DALI index, reading sequentially from there,
as a webdataset tar reader does. The format is plain webdataset: ``<key>.jpg`` + ``<key>.cls``.

Only the ``.jpg`` member (as JPEG) and the ``.cls`` member (as ASCII digits) are ever decoded;
other members are ignored, nothing is unpickled. A bad sample is skipped, counted and reported
with its shard and key (training draws a replacement so batch counts stay equal), or raises
:class:`~adaact_dist.data.images.BadSampleError` with ``strict=True``.
"""

from __future__ import annotations

import itertools
import logging
import random
import signal
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from adaact_dist._seeds import derive_seed
from adaact_dist.data.config import LoaderConfig
from adaact_dist.data.images import BadSampleError, decode_jpeg, parse_label
from adaact_dist.data.partition import (
    epoch_shard_order,
    iter_positions,
    rank_batch_range,
    worker_sample_range,
)
from adaact_dist.data.rank_loader import RankLoader
from adaact_dist.data.shardset import ShardSet
from adaact_dist.data.transforms import BatchNormalizer, build_transform

__all__ = ["WdsLoader"]

log = logging.getLogger(__name__)

RawSample = tuple[int, str, bytes, bytes]  # shard number, key, image bytes, label bytes
BadRecord = tuple[str, str, str]  # shard path, key, reason


def _shuffled(samples: Iterator[RawSample], size: int, rng: random.Random) -> Iterator[RawSample]:
    """webdataset-style buffer shuffle: fill ``size`` samples, then emit a random one per read."""
    buffer: list[RawSample] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(len(buffer))
        buffer[i], sample = sample, buffer[i]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


class _ShardStream(IterableDataset):
    """What one DataLoader worker runs: read its positions, decode, transform, batch."""

    def __init__(self, cfg: LoaderConfig, shardset: ShardSet, transform, epoch) -> None:
        super().__init__()
        self.cfg = cfg
        self.shards = shardset.shards
        self.counts = shardset.counts
        self.num_classes = shardset.num_classes
        self.transform = transform
        self.epoch = epoch  # shared memory: persistent workers see set_epoch()

    def _read(self, order: list[int], start: int, stop: int | None) -> Iterator[RawSample]:
        """Raw samples at global positions ``[start, stop)`` (``stop=None``: wrap forever)."""
        positions = iter_positions(order, self.counts, start, stop)
        for shard, run in itertools.groupby(positions, key=lambda p: p[0]):
            entries = self.shards[shard].entries()
            if len(entries) != self.counts[shard]:
                raise RuntimeError(
                    f"Shard {self.shards[shard].path} changed since the loader started: "
                    f"{len(entries)} usable samples, expected {self.counts[shard]}"
                )
            with open(self.shards[shard].path, "rb") as f:
                for _, i in run:
                    entry = entries[i]
                    image, label = entry.image, entry.label
                    first = min(image[0], label[0])
                    f.seek(first)
                    chunk = f.read(max(image[0] + image[1], label[0] + label[1]) - first)
                    yield (
                        shard,
                        entry.key,
                        chunk[image[0] - first : image[0] - first + image[1]],
                        chunk[label[0] - first : label[0] - first + label[1]],
                    )

    def _decode(self, sample: RawSample) -> tuple[torch.Tensor, int]:
        _, _, image_bytes, label_bytes = sample
        label = parse_label(label_bytes, self.num_classes)
        return self.transform(decode_jpeg(image_bytes)), label

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[BadRecord]]]:
        cfg = self.cfg
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = int(self.epoch.value)
        seed = derive_seed(cfg.seed, "wds-worker", rank=cfg.rank, epoch=epoch, worker=worker)
        if info is not None:  # reproducible augmentation per (seed, epoch, rank, worker)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
        total = sum(self.counts)
        order = epoch_shard_order(len(self.counts), seed=cfg.seed, epoch=epoch, shuffle=cfg.shuffle)
        start, stop = rank_batch_range(
            total,
            rank=cfg.rank,
            world_size=cfg.world_size,
            batch_size=cfg.batch_size,
            drop_last=cfg.drop_last,
        )
        start, stop = worker_sample_range(
            start, stop, batch_size=cfg.batch_size, worker=worker, num_workers=num_workers
        )
        need = stop - start
        if need == 0:
            return
        samples = self._read(order, start, stop)
        if cfg.shuffle:
            samples = _shuffled(samples, cfg.shuffle_buffer, random.Random(seed))
        if cfg.drop_last:  # replacements for bad samples keep every batch full
            samples = itertools.chain(samples, self._read(order, stop, None))
        images, labels, bad = [], [], []
        produced = failures = 0
        for sample in samples:
            try:
                image, label = self._decode(sample)
            except BadSampleError as e:
                path, key = str(self.shards[sample[0]].path), sample[1]
                if cfg.strict:
                    raise BadSampleError(f"{path}: sample {key!r}: {e}") from e
                bad.append((path, key, str(e)))
                failures += 1
                if failures > total:
                    raise RuntimeError(f"No decodable sample among {total}; last: {path}") from e
                continue
            images.append(image)
            labels.append(label)
            produced += 1
            if len(images) == cfg.batch_size:
                # default_collate stacks straight into shared memory inside a worker process,
                # saving the copy that sending a stacked batch to the main process would cost.
                yield default_collate(images), torch.tensor(labels, dtype=torch.int64), bad
                images, labels, bad = [], [], []
            if cfg.drop_last and produced == need:
                break
        if images or bad:  # the short last batch (evaluation), or bad samples after the last one
            if images:
                batch = default_collate(images)
            else:
                batch = torch.empty(0, 3, cfg.image_size, cfg.image_size, dtype=torch.uint8)
            yield batch, torch.tensor(labels, dtype=torch.int64), bad


def _ignore_sigterm(worker_id: int) -> None:
    """Leave preemption to the trainer: a SIGTERM sent to the whole process group (Slurm,
    the deepspeed launcher) must not kill the workers before the trainer's checkpoint.
    Workers still end when the loader shuts them down or their parent exits."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class WdsLoader(RankLoader):
    """Iterable over ``(images, labels)`` batches of one rank; see :func:`create_loader`."""

    def __init__(self, cfg: LoaderConfig, shardset: ShardSet) -> None:
        super().__init__(cfg, shardset)
        transform = build_transform(
            is_training=cfg.is_training,
            image_size=cfg.image_size,
            crop_pct=cfg.crop_pct,
            scale=cfg.scale,
            ratio=cfg.ratio,
            hflip=cfg.hflip,
            auto_augment=cfg.auto_augment,
            train_interpolation=cfg.train_interpolation,
            interpolation=cfg.interpolation,
            mean=cfg.mean,
            std=cfg.std,
        )
        self.dataset = _ShardStream(cfg, shardset, transform, self._epoch)
        workers = cfg.num_workers
        self._loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=cfg.prefetch if workers > 0 else None,
            pin_memory=cfg.device.type == "cuda",
            worker_init_fn=_ignore_sigterm,
        )
        self._normalize = BatchNormalizer(cfg.mean, cfg.std, cfg.device, cfg.channels_last)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.cfg.device
        for images, labels, bad in self._loader:
            for shard, key, reason in bad:
                self.num_skipped += 1
                log.warning("Skipped bad sample %r in %s: %s", key, shard, reason)
            if len(labels) == 0:
                continue
            yield self._normalize(images), labels.to(device, non_blocking=True)
