"""Atomic checkpoints with retention (last K + best) and automatic resume.

A checkpoint is a directory ``<run>/checkpoints/step00001234/`` holding DeepSpeed's
files (model, optimizer or its ZeRO shards, the trainer state as client state), one
RNG file per rank, and ``meta.json``. All ranks write into ``.tmp-step00001234/``;
only when every rank has finished does rank 0 rename it to its final name. A crash
mid-write therefore leaves a ``.tmp-`` directory (removed at the next start), never a
damaged checkpoint, and an older checkpoint is deleted only after a newer one is
complete. Every directory named ``step*`` is complete: resume picks the newest.

``meta.json`` also records the size and SHA-256 of every file of the checkpoint, the
world size that wrote it and the run's config. :meth:`CheckpointManager.verify` checks
those files before anything is deserialised, so a checkpoint damaged after it was
written (a full disk, a bad copy, a lost rank file) is recognised as such; resume then
falls back to an older one (:mod:`adaact_dist.train.resume`). A checkpoint of another
world size loads through its universal conversion, kept in ``checkpoints/universal/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from adaact_dist._files import fsync_dir
from adaact_dist.train.logger import get_logger

META = "meta.json"
RNG_DIR = "rng"
TRAINER_STATE = "trainer_state"
UNIVERSAL_DIR = "universal"
DAMAGED = "damaged.jsonl"
_TAG = re.compile(r"^step(\d{8,})$")
_ZERO_OPTIM = re.compile(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint on disk."""

    path: Path
    step: int
    epoch: int
    top1: float | None

    @property
    def tag(self) -> str:
        return self.path.name

    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / META).read_text())

    def zero_world_size(self) -> int | None:
        """The data-parallel size of a ZeRO-1/2 checkpoint (its per-rank optimizer files);
        None for a stage-0 one, whose optimizer state is whole and loads on any world size."""
        ranks = {int(m.group(1)) for p in self.path.iterdir() if (m := _ZERO_OPTIM.match(p.name))}
        return len(ranks) or None


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class CheckpointManager:
    """Saves, lists, prunes and loads the checkpoints of one run directory."""

    def __init__(self, directory: str | Path, *, keep_last: int, keep_best: bool, rank: int):
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.rank = rank

    # -- discovery ---------------------------------------------------------------------
    def list(self) -> list[CheckpointInfo]:
        """Complete checkpoints, oldest first (those found damaged are not among them)."""
        if not self.directory.is_dir():
            return []
        damaged = self.damaged()
        found = []
        for path in self.directory.iterdir():
            match = _TAG.match(path.name)
            if not match or not (path / META).is_file() or path.name in damaged:
                continue
            meta = json.loads((path / META).read_text())
            found.append(
                CheckpointInfo(
                    path=path, step=meta["step"], epoch=meta["epoch"], top1=meta.get("top1")
                )
            )
        return sorted(found, key=lambda info: info.step)

    def latest(self) -> CheckpointInfo | None:
        found = self.list()
        return found[-1] if found else None

    def best(self) -> CheckpointInfo | None:
        scored = [info for info in self.list() if info.top1 is not None]
        return max(scored, key=lambda info: (info.top1, info.step)) if scored else None

    def remove_partial(self) -> None:
        """Rank 0 deletes leftovers of interrupted writes and deletions."""
        if self.rank == 0 and self.directory.is_dir():
            for path in self.directory.iterdir():
                if path.name.startswith((".tmp-", ".del-")):
                    get_logger().warning("Removing incomplete checkpoint %s", path)
                    shutil.rmtree(path, ignore_errors=True)
        _barrier()

    # -- saving ------------------------------------------------------------------------
    def save(
        self,
        engine: Any,
        *,
        step: int,
        epoch: int,
        top1: float | None,
        trainer_state: dict[str, Any],
        rank_state: dict[str, Any] | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> CheckpointInfo:
        """Collective: every rank calls it. ``rank_state`` (e.g. a private random stream) is
        saved per rank next to the global RNG states; ``run_config`` goes into the meta file,
        so that a checkpoint loaded into another run can be recognised. Returns the new
        checkpoint.

        A checkpoint of the same step is kept as it is, unless it holds another ``epoch``: a
        run stopped on an epoch's last step saved that step before the epoch's evaluation,
        and the state after it (epoch advanced, top-1, best) replaces that one."""
        tag = tag_for(step)
        final = self.directory / tag
        replaced = None
        if final.is_dir() and (final / META).is_file():
            if tag not in self.damaged():
                existing = next(info for info in self.list() if info.tag == tag)
                if existing.epoch == epoch:
                    return existing
                replaced = existing
            elif self.rank == 0:  # the run needs the name again: keep the damaged one aside
                aside = final.with_name(f"{tag}.damaged-{int(time.time())}")
                os.rename(final, aside)
                get_logger().warning("Moved the damaged checkpoint %s to %s", final, aside)
            _barrier()
        tmp_tag = f".tmp-{tag}"
        tmp = self.directory / tmp_tag
        if self.rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        _barrier()
        started = time.perf_counter()
        engine.save_checkpoint(
            str(self.directory),
            tag=tmp_tag,
            client_state={TRAINER_STATE: trainer_state},
            save_latest=False,
        )
        (tmp / RNG_DIR).mkdir(parents=True, exist_ok=True)
        torch.save(
            {"rng": rng_state(), **(rank_state or {})}, tmp / RNG_DIR / f"rank{self.rank:05d}.pt"
        )
        _barrier()
        if self.rank == 0:
            meta = {
                "step": step,
                "epoch": epoch,
                "top1": top1,
                "time": time.time(),
                "world_size": dist.get_world_size() if dist.is_initialized() else 1,
                "config": run_config,
                "files": _file_digests(tmp),
            }
            (tmp / META).write_text(json.dumps(meta, indent=1))
            _fsync_tree(tmp)
            doomed = final.with_name(f".del-{tag}")
            if replaced is not None:  # a crash in between falls back to an older checkpoint
                os.rename(final, doomed)
            os.rename(tmp, final)
            shutil.rmtree(doomed, ignore_errors=True)
            fsync_dir(self.directory)
            self._prune()
            get_logger().info(
                "Checkpoint %s written in %.1f s", final, time.perf_counter() - started
            )
        _barrier()
        return CheckpointInfo(path=final, step=step, epoch=epoch, top1=top1)

    def _prune(self) -> None:
        found = self.list()
        keep = {info.tag for info in found[-self.keep_last :]}
        best = self.best() if self.keep_best else None
        if best is not None:
            keep.add(best.tag)
        for info in found:
            if info.tag not in keep:
                doomed = info.path.with_name(f".del-{info.tag}")
                os.rename(info.path, doomed)  # never leave a half-deleted "complete" one
                shutil.rmtree(doomed, ignore_errors=True)
                shutil.rmtree(self.universal_path(info), ignore_errors=True)

    # -- integrity and other world sizes -------------------------------------------------
    def damaged(self) -> set[str]:
        """Tags found damaged by :meth:`mark_damaged`: never resumed from, never pruned."""
        record = self.directory / DAMAGED
        if not record.is_file():
            return set()
        return {
            json.loads(line)["tag"]
            for line in record.read_text().splitlines()
            if line.strip().startswith("{")
        }

    def mark_damaged(self, info: CheckpointInfo, reason: str) -> None:
        """Record that ``info`` failed verification; it stays on disk, untouched."""
        if self.rank == 0:
            line = {"tag": info.tag, "reason": reason, "time": time.time()}
            with open(self.directory / DAMAGED, "a") as handle:
                handle.write(json.dumps(line) + "\n")
        _barrier()

    def verify(self, info: CheckpointInfo) -> str | None:
        """Why ``info`` cannot be loaded (a missing, truncated or altered file), or None.

        Reads every file once; nothing is deserialised.
        """
        try:
            meta = info.meta()
        except (OSError, json.JSONDecodeError) as error:
            return f"its {META} is unreadable ({error})"
        files = meta.get("files")
        if not isinstance(files, dict):
            return f"its {META} lists no file digests to check the files against"
        for name, expected in files.items():
            path = info.path / name
            if not path.is_file():
                return f"{name} is missing"
            size = path.stat().st_size
            if size != expected["bytes"]:
                return f"{name} has {size} bytes, {expected['bytes']} were written"
            if _sha256(path) != expected["sha256"]:
                return f"{name} differs from what was written (SHA-256 mismatch)"
        return None

    def universal_path(self, info: CheckpointInfo) -> Path:
        """Where the universal (any world size) conversion of ``info`` is kept."""
        return self.directory / UNIVERSAL_DIR / info.tag

    def universal(self, info: CheckpointInfo) -> Path:
        """The universal conversion of ``info``, converted by rank 0 on first use and reused
        afterwards; ``info`` itself is left untouched. Collective."""
        from adaact_dist.distributed import convert_to_universal

        target = self.universal_path(info)
        if self.rank == 0 and not target.is_dir():
            tmp = target.with_name(f".tmp-{info.tag}")
            shutil.rmtree(tmp, ignore_errors=True)
            convert_to_universal(info.path, tmp, write_latest=False)
            _fsync_tree(tmp)
            os.rename(tmp, target)
            fsync_dir(target.parent)
        _barrier()
        return target

    # -- loading -----------------------------------------------------------------------
    def info(self, path: str | Path) -> CheckpointInfo:
        """The checkpoint at ``path`` (any run's), or FileNotFoundError saying what it lacks."""
        path = Path(path)
        if not (path / META).is_file():
            raise FileNotFoundError(
                f"{path} is not a complete checkpoint (no {META}); pick a step* directory"
            )
        meta = json.loads((path / META).read_text())
        return CheckpointInfo(path=path, step=meta["step"], epoch=meta["epoch"], top1=meta["top1"])

    def load(
        self, engine: Any, path: str | Path, *, universal: Path | None = None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Restore model and optimizer into ``engine`` (from ``universal``, the conversion of
        ``path``, for an engine built with ``load_universal``); return the trainer state and
        this rank's state (``{"rng": ..., **rank_state}``; None if written with fewer ranks)."""
        path = self.info(path).path
        source = universal or path
        load_path, client_state = engine.load_checkpoint(
            str(source.parent),
            tag=source.name,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )
        if load_path is None or not client_state or TRAINER_STATE not in client_state:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {path}")
        rng_file = path / RNG_DIR / f"rank{self.rank:05d}.pt"
        rank_state = torch.load(rng_file, weights_only=False) if rng_file.is_file() else None
        return client_state[TRAINER_STATE], rank_state


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _file_digests(root: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file under ``root``, by path relative to it."""
    return {
        path.relative_to(root).as_posix(): {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(Path(folder))
