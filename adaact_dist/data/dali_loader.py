"""Run the DALI pipeline for one rank and hand out torch batches with the wds loader's semantics.

Each epoch builds a fresh pipeline whose reader sees the shards in the epoch's seeded order
(:func:`~adaact_dist.data.partition.epoch_shard_order`), so that DALI's own split
(``shard_id=rank``, ``num_shards=world_size``) gives every rank exactly the samples the wds
loader would give it, and no prefetched batch leaks into the next epoch. Building costs well
under a second; an ImageNet epoch takes minutes.

Bad data: samples without image or label never reach DALI (filtered index files). A label that
is not an integer is dropped from its batch (the batch is one short), counted and logged. An
image DALI cannot decode stops the pipeline; without ``strict`` the loader then scans this
rank's samples with PIL and points the index entry of each undecodable one at the next good
sample of its shard (the previous one at its end), under the bad sample's own member names.
The global partition, every rank's batch count and the reader's order stay as they were, so
the rebuilt pipeline (same seeds) replays the epoch: the batches already handed out are
decoded again and discarded, and the epoch continues where it failed. Every other sample is
read exactly once; the stand-in, recognised by its name, takes the bad sample's place in
training (the batch stays full, so one sample of that shard is read twice) and is dropped in
evaluation (the batch is one short). It is counted and logged in every epoch that reaches it,
as the wds loader does. The cost, once per rank and epoch in which a new bad image turns up:
the PIL scan of the rank's samples and the second decoding of the batches handed out before
the failure.
"""

from __future__ import annotations

import concurrent.futures
import logging
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from adaact_dist._seeds import derive_seed
from adaact_dist.data.config import LoaderConfig
from adaact_dist.data.images import BadSampleError, decode_jpeg, parse_label
from adaact_dist.data.partition import (
    epoch_shard_order,
    iter_positions,
    rank_batch_range,
    rank_range,
)
from adaact_dist.data.rank_loader import RankLoader
from adaact_dist.data.shardset import ShardSet
from adaact_dist.data.tar_index import LABEL_EXT, IndexEntry, format_index

__all__ = ["DaliLoader"]

log = logging.getLogger(__name__)


def _to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    """Copy a dense DALI TensorList (CPU or GPU) into a new torch tensor on ``device``."""
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dense = tensor_list.as_tensor()
    out = torch.empty(dense.shape(), dtype=torch.float32, device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    feed_ndarray(dense, out, cuda_stream=stream)
    return out


def _dali_reason(error: Exception) -> str:
    """The informative line of a DALI pipeline error (the line after "encountered:")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for i, line in enumerate(lines[:-1]):
        if line == "encountered:":
            return lines[i + 1][:300]
    return lines[0][:300] if lines else type(error).__name__


class DaliLoader(RankLoader):
    """Iterable over ``(images, labels)`` batches of one rank; see :func:`create_loader`."""

    def __init__(self, cfg: LoaderConfig, shardset: ShardSet) -> None:
        from adaact_dist.data.dali_augment import parse_rand_augment

        super().__init__(cfg, shardset)
        device = cfg.device
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(f"Invalid device={device}: CUDA is not available here")
            self._device_id = (
                device.index if device.index is not None else torch.cuda.current_device()
            )
            self._decode_device = "mixed"
            self._out_device = torch.device("cuda", self._device_id)
        elif device.type == "cpu":
            self._device_id = None
            self._decode_device = "cpu"
            self._out_device = device
        else:
            raise ValueError(f"Invalid device={device}: the DALI backend supports cpu and cuda")
        self._rand_augment = (
            parse_rand_augment(cfg.auto_augment) if cfg.is_training and cfg.auto_augment else None
        )
        self._tmpdir = Path(tempfile.mkdtemp(prefix="adaact-dali-index-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._tmpdir, True)
        self._replaced: dict[int, dict[int, int]] = {}  # shard -> {bad sample: stand-in}
        # DALI's source_info of a stand-in's label -> what to log when it is skipped.
        self._stand_ins: dict[str, str] = {}
        self._index_paths = [self._index_for(i) for i in range(len(shardset.shards))]

    # -- index files -------------------------------------------------------------------------

    def _index_for(self, shard: int) -> str:
        """The index DALI reads: the shard's own, or a rewritten one in the temporary directory
        when the shard has no index, incomplete samples, or samples replaced after a failure.

        A stand-in keeps the bad sample's key, so its members are named apart from the good
        sample whose bytes it reads, and DALI's ``source_info`` tells the two apart.
        """
        s = self.shardset.shards[shard]
        if s.index_path is not None and not s.incomplete and shard not in self._replaced:
            return str(s.index_path)
        entries = self.shardset.shards[shard].entries()
        for bad, good in self._replaced.get(shard, {}).items():
            entries[bad] = IndexEntry(entries[bad].key, entries[good].members)
        path = self._tmpdir / f"{shard:06d}-{len(self._replaced.get(shard, {}))}.idx"
        path.write_text(format_index(entries), encoding="utf-8")
        return str(path)

    # -- pipeline ----------------------------------------------------------------------------

    def _build(self, epoch: int):
        from adaact_dist.data.dali_pipeline import image_pipeline

        cfg = self.cfg
        order = epoch_shard_order(
            len(self.shardset.shards), seed=cfg.seed, epoch=epoch, shuffle=cfg.shuffle
        )
        # The same seeds for a rebuilt pipeline: it replays the epoch's order and augmentation.
        # 31 bits keep DALI's seeds in int32 range.
        seed_parts = dict(rank=cfg.rank, epoch=epoch, bits=31)
        pipe = image_pipeline(
            batch_size=cfg.batch_size,
            num_threads=cfg.num_workers,
            device_id=self._device_id,
            seed=derive_seed(cfg.seed, "dali-pipeline", **seed_parts),
            prefetch_queue_depth=cfg.prefetch,
            paths=[str(self.shardset.shards[i].path) for i in order],
            index_paths=[self._index_paths[i] for i in order],
            shard_id=cfg.rank,
            num_shards=cfg.world_size,
            shuffle=cfg.shuffle,
            initial_fill=cfg.shuffle_buffer,
            reader_seed=derive_seed(cfg.seed, "dali-reader", **seed_parts),
            decode_device=self._decode_device,
            is_training=cfg.is_training,
            image_size=cfg.image_size,
            crop_pct=cfg.crop_pct,
            scale=cfg.scale,
            ratio=cfg.ratio,
            hflip=cfg.hflip,
            rand_augment=self._rand_augment,
            train_interpolation=cfg.train_interpolation,
            interpolation=cfg.interpolation,
            mean=cfg.mean,
            std=cfg.std,
            channels_last=cfg.channels_last,
        )
        pipe.build()
        return pipe

    # -- bad images --------------------------------------------------------------------------

    def _recover(self, epoch: int, error: Exception, delivered: int) -> None:
        """Find the images of this rank's epoch that PIL cannot decode and stand in for them."""
        cfg = self.cfg
        order = epoch_shard_order(
            len(self.shardset.shards), seed=cfg.seed, epoch=epoch, shuffle=cfg.shuffle
        )
        start, _ = rank_range(self.shardset.total, cfg.rank, cfg.world_size)
        # The reader may also decode a few batches past the range (prefetch, last-batch fill).
        span = min(self.shardset.total, (self._len + cfg.prefetch + 1) * cfg.batch_size)
        log.warning(
            "DALI failed on rank %d after %d batches of epoch %d (%s); scanning %d samples for "
            "undecodable images, then replaying those batches",
            cfg.rank, delivered, epoch, _dali_reason(error), span,
        )  # fmt: skip
        entries: dict[int, list[IndexEntry]] = {}
        todo = []
        for shard, i in iter_positions(order, self.shardset.counts, start, start + span):
            if i in self._replaced.get(shard, {}):
                continue
            if shard not in entries:
                entries[shard] = self.shardset.shards[shard].entries()
            todo.append((shard, i))

        def check(item: tuple[int, int]) -> tuple[int, int, str] | None:
            shard, i = item
            offset, size = entries[shard][i].image
            with open(self.shardset.shards[shard].path, "rb") as f:
                f.seek(offset)
                data = f.read(size)
            try:
                decode_jpeg(data)
            except BadSampleError as e:
                return shard, i, str(e)
            return None

        with concurrent.futures.ThreadPoolExecutor(cfg.num_workers) as pool:
            found = [r for r in pool.map(check, todo) if r is not None]
        if not found:
            raise RuntimeError(
                f"DALI pipeline failed on rank {cfg.rank} and no undecodable image was found in "
                f"its samples: {error}"
            ) from error
        undecodable = {(shard, i) for shard, i, _ in found}
        for shard, i, reason in found:
            replaced = self._replaced.setdefault(shard, {})
            shard_entries = entries[shard]
            candidates = [*range(i + 1, len(shard_entries)), *range(i - 1, -1, -1)]
            good = next(
                (j for j in candidates if j not in replaced and (shard, j) not in undecodable),
                None,
            )
            if good is None:
                raise RuntimeError(
                    f"No decodable image left in shard {self.shardset.shards[shard].path}"
                ) from error
            replaced[i] = good
            path = self.shardset.shards[shard].path
            bad_key, (good_label_offset, _) = shard_entries[i].key, shard_entries[good].label
            # DALI's source_info of a label: "<tar path>:<data offset>:<member name>".
            source = f"{path}:{good_label_offset}:{bad_key}.{LABEL_EXT}"
            self._stand_ins[source] = (
                f"{bad_key!r} in {path}: {reason} (stand-in: {shard_entries[good].key!r})"
            )
        for shard in {s for s, _, _ in found}:
            self._index_paths[shard] = self._index_for(shard)

    # -- iteration ---------------------------------------------------------------------------

    def _labels(self, label_list, keep: int) -> tuple[torch.Tensor, list[int]]:
        """Parse ASCII labels of the first ``keep`` samples; return labels and kept indices.

        Stand-ins for undecodable images are counted and logged; they stay in training batches
        (full batches, as the wds loader's replacements) and leave evaluation batches.
        """
        labels, kept = [], []
        for i in range(keep):
            if self._stand_ins:
                stand_in = self._stand_ins.get(label_list[i].source_info())
                if stand_in is not None:
                    self.num_skipped += 1
                    log.warning("Skipped bad sample %s", stand_in)
                    if not self.cfg.drop_last:
                        continue
            data = np.asarray(label_list[i]).tobytes()
            try:
                labels.append(parse_label(data, self.shardset.num_classes))
            except BadSampleError as e:
                source = label_list[i].source_info()
                if self.cfg.strict:
                    raise BadSampleError(f"{source}: {e}") from e
                self.num_skipped += 1
                log.warning("Skipped bad sample %s: %s", source, e)
                continue
            kept.append(i)
        return torch.tensor(labels, dtype=torch.int64), kept

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.cfg
        epoch = self.epoch
        start, stop = rank_batch_range(
            self.shardset.total,
            rank=cfg.rank,
            world_size=cfg.world_size,
            batch_size=cfg.batch_size,
            drop_last=cfg.drop_last,
        )
        remaining = stop - start
        if self._len == 0:
            return
        pipe = self._build(epoch)
        try:
            batch = 0
            while batch < self._len:
                try:
                    images_tl, labels_tl = pipe.run()
                except RuntimeError as e:
                    if cfg.strict:
                        raise BadSampleError(
                            f"DALI pipeline failed on rank {cfg.rank} (strict=True): {e}"
                        ) from e
                    pipe = None  # free the failed pipeline's threads and memory first
                    self._recover(epoch, e, batch)
                    pipe = self._build(epoch)
                    for _ in range(batch):  # the same seeds: these are the batches handed out
                        pipe.run()
                    continue
                keep = min(cfg.batch_size, remaining)
                labels, kept = self._labels(labels_tl, keep)
                images = _to_torch(images_tl, self._out_device)
                if len(kept) != images.shape[0]:
                    images = images[torch.tensor(kept, dtype=torch.long, device=images.device)]
                if cfg.channels_last:  # NHWC storage seen as NCHW: channels-last, no copy
                    images = images.permute(0, 3, 1, 2)
                remaining -= keep
                batch += 1
                if len(kept):
                    yield images, labels.to(self._out_device, non_blocking=True)
        finally:
            pipe = None
