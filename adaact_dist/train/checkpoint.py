"""Atomic checkpoints with retention (last K + best) and automatic resume.

A checkpoint is a directory ``<run>/checkpoints/step00001234/`` holding DeepSpeed's
files (model, optimizer or its ZeRO shards, the trainer state as client state), one
RNG file per rank, and ``meta.json``. All ranks write into ``.tmp-step00001234/``;
only when every rank has finished does rank 0 rename it to its final name. A crash
mid-write therefore leaves a ``.tmp-`` directory (removed at the next start), never a
damaged checkpoint, and an older checkpoint is deleted only after a newer one is
complete. Every directory named ``step*`` is complete: resume picks the newest.
"""

from __future__ import annotations

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
_TAG = re.compile(r"^step(\d{8,})$")


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
        """Complete checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _TAG.match(path.name)
            if not match or not (path / META).is_file():
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
    ) -> CheckpointInfo:
        """Collective: every rank calls it. ``rank_state`` (e.g. a private random stream) is
        saved per rank next to the global RNG states. Returns the new checkpoint."""
        tag = tag_for(step)
        final = self.directory / tag
        if final.is_dir() and (final / META).is_file():
            return next(info for info in self.list() if info.tag == tag)
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
            meta = {"step": step, "epoch": epoch, "top1": top1, "time": time.time()}
            (tmp / META).write_text(json.dumps(meta, indent=1))
            _fsync_tree(tmp)
            os.rename(tmp, final)
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

    # -- loading -----------------------------------------------------------------------
    def load(self, engine: Any, path: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Restore model and optimizer into ``engine``; return the trainer state and this
        rank's state (``{"rng": ..., **rank_state}``; None if written with fewer ranks)."""
        path = Path(path)
        if not (path / META).is_file():
            raise FileNotFoundError(
                f"{path} is not a complete checkpoint (no {META}); pick a step* directory"
            )
        load_path, client_state = engine.load_checkpoint(
            str(path.parent),
            tag=path.name,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )
        if load_path is None or not client_state or TRAINER_STATE not in client_state:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {path}")
        rng_file = path / RNG_DIR / f"rank{self.rank:05d}.pt"
        rank_state = torch.load(rng_file, weights_only=False) if rng_file.is_file() else None
        return client_state[TRAINER_STATE], rank_state


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(Path(folder))
