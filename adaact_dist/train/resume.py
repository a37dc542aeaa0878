"""Which checkpoint a start resumes from, chosen before the engine is built.

``checkpoint.resume: auto`` takes the newest checkpoint of the run directory whose files are
intact; a damaged one (checksum, truncation, a missing rank file) is reported by path and
reason, left where it is, and the next older one is tried. An explicitly named checkpoint
that fails is an error naming it and the reason. A checkpoint from another run (another
model, optimizer, batch...) is refused like a changed config.

A ZeRO-1/2 checkpoint written by another number of ranks is converted once to DeepSpeed's
universal layout (next to it, the original untouched) and loaded from there; the engine
must then be built with ``checkpoint.load_universal``, which is why the choice comes first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

from adaact_dist.train.checkpoint import CheckpointInfo, CheckpointManager
from adaact_dist.train.config import ConfigValueError
from adaact_dist.train.config_io import ConfigError
from adaact_dist.train.logger import get_logger
from adaact_dist.train.run_record import guarded_differences


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint to load, and its universal conversion when the world size changed."""

    checkpoint: CheckpointInfo
    universal: Path | None = None


def choose_resume_point(
    manager: CheckpointManager,
    resume: str,
    *,
    world_size: int,
    run_config: dict[str, Any],
    allowed: tuple[str, ...] = (),
) -> ResumePoint | None:
    """Collective: every rank gets the same answer (rank 0 reads the files). ``allowed``
    keys may differ from the checkpoint's config (``checkpoint.allow_changes``)."""
    manager.remove_partial()
    if resume == "never":
        return None
    if resume == "auto":
        candidates = list(reversed(manager.list()))
    else:
        try:
            candidates = [manager.info(resume)]
        except FileNotFoundError as error:
            raise ConfigValueError("checkpoint.resume", resume, f"a checkpoint ({error})") from None
    log = get_logger()
    for info in candidates:
        reason = _on_rank0(lambda info=info: manager.verify(info))
        if reason is None:
            _check_same_run(info, run_config, allowed, explicit=resume != "auto")
            return ResumePoint(info, _conversion(manager, info, world_size))
        if resume != "auto":
            raise ConfigValueError(
                "checkpoint.resume", resume, f"an intact checkpoint, but {reason}"
            )
        log.warning("Skipping damaged checkpoint %s: %s (left in place)", info.path, reason)
        manager.mark_damaged(info, reason)
    if candidates:
        raise ConfigError(
            f"Every checkpoint in {manager.directory} is damaged (reasons above): nothing to "
            "resume from. Restore one, or start afresh in a new run.output_dir"
        )
    return None


def _conversion(manager: CheckpointManager, info: CheckpointInfo, world_size: int) -> Path | None:
    saved = info.zero_world_size()
    if saved is None or saved == world_size:
        return None
    reused = manager.universal_path(info).is_dir()
    universal = manager.universal(info)
    how = "reusing its universal conversion" if reused else "converted it once to the universal"
    get_logger().info(
        "%s was written by %d ranks, this job has %d: %s %s",
        info.path, saved, world_size, how, universal,
    )  # fmt: skip
    return universal


def _check_same_run(
    info: CheckpointInfo, run_config: dict[str, Any], allowed: tuple[str, ...], *, explicit: bool
) -> None:
    saved = info.meta().get("config")
    if saved is None:  # written before checkpoints recorded their config
        return
    differ = {
        key: values
        for key, values in guarded_differences(saved, run_config).items()
        if key not in allowed
    }
    if differ:
        keys = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in differ.items())
        where = "checkpoint.resume" if explicit else "the run directory's newest checkpoint"
        raise ConfigError(
            f"{info.path} ({where}) belongs to a run with another config: {keys}. Load it with "
            "that run's config, or start afresh (checkpoint.resume=never, a new run.output_dir)"
        )


def _on_rank0(compute):
    """``compute()`` on rank 0, its result on every rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return compute()
    box = [compute() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
