"""The trainer's one logger: rank 0 prints progress, other ranks only warnings and errors."""

from __future__ import annotations

import logging
import os
import sys

NAME = "adaact_dist"
_FORMAT = "%(asctime)s %(levelname)s [rank %(rank)s] %(message)s"


def _env_rank() -> int:
    for var in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def get_logger(rank: int | None = None) -> logging.Logger:
    """The ``adaact_dist`` logger, configured once per process.

    Rank 0 logs INFO and above; every other rank logs WARNING and above, so non-zero
    ranks stay quiet apart from problems. ``rank`` defaults to the launcher's
    environment (``RANK``, ``SLURM_PROCID``, ...); pass it again after the process
    group is up to re-label the records.
    """
    logger = logging.getLogger(NAME)
    rank = _env_rank() if rank is None else rank
    if not getattr(logger, "_adaact_configured", False):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
        logger._adaact_configured = True  # type: ignore[attr-defined]
    for handler in logger.handlers:
        for old in [f for f in handler.filters if isinstance(f, _RankFilter)]:
            handler.removeFilter(old)
        handler.addFilter(_RankFilter(rank))
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    return logger
