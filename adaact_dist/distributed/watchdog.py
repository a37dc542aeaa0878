"""A watchdog that ends a rank which stopped making progress, so no job waits forever.

A dead rank leaves the others blocked in their next collective. The process-group
timeout (:func:`adaact_dist.distributed.init_distributed`) bounds that wait where the backend
honours it; this thread bounds everything else (a rank stuck in a data loader, a
collective that never times out): if no forward pass or optimizer step happens for
``timeout_s`` seconds, it prints every thread's stack and exits the process with
:data:`WATCHDOG_EXIT_CODE`, which makes launchers (deepspeed, torchrun, srun) stop the
other ranks too.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
import time
from collections.abc import Iterator

WATCHDOG_EXIT_CODE = 124  # what coreutils' timeout uses for "took too long"


class HangWatchdog:
    """Exit this process when :meth:`pet` was not called for ``timeout_s`` seconds."""

    def __init__(self, timeout_s: float, *, exit_code: int = WATCHDOG_EXIT_CODE):
        if not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ValueError(f"Invalid timeout_s={timeout_s!r}: must be a number of seconds > 0")
        self.timeout_s = float(timeout_s)
        self.exit_code = exit_code
        self._last = time.monotonic()
        self._paused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="adaact-watchdog", daemon=True)
        self._thread.start()

    def pet(self) -> None:
        """Training made progress."""
        self._last = time.monotonic()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Allow one long, legitimate pause (a checkpoint save, an evaluation set-up)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            self.pet()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout_s / 4)):
            idle = time.monotonic() - self._last
            if self._paused or idle <= self.timeout_s:
                continue
            rank = os.environ.get("RANK", "?")
            sys.stderr.write(
                f"[rank {rank}] adaact-dist watchdog: no forward pass or optimizer step for "
                f"{idle:.0f} s (timeout_s={self.timeout_s:g}); another rank is dead or this one "
                f"is stuck. Exiting with status {self.exit_code}. Stacks of all threads:\n"
            )
            sys.stderr.flush()
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            sys.stderr.flush()
            os._exit(self.exit_code)
