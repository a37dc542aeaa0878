"""Running the study's trainer runs: one subprocess each, finished ones skipped.

Every run is an ordinary trainer start (``python -m adaact_dist.train``, the command line of
``launch/train_imagenet.py``, so that the package runs its studies without a checkout) in its
own run directory, as one process (world size 1), so that no state leaks from one run into
the next and every run directory holds the same records as any other run. A run whose
``summary.json`` says it finished or diverged is final and skipped; any other run is started
again, and the trainer resumes it from its newest checkpoint. Before anything runs, every
run's config is resolved and checked against the record of its directory, so a changed
recipe stops the study at once instead of mixing two recipes in one table.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from adaact_dist.study.recipes import RunSpec
from adaact_dist.train.config_io import ConfigError, load_config
from adaact_dist.train.run_record import RunRecord
from adaact_dist.train.run_summary import RunSummary, StopReason

TRAINER_MODULE = "adaact_dist.train"
LOG = "train.log"
_LAUNCHER_ENV = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_PROCID",
    "SLURM_NTASKS",
)
"""Variables that would make a run join a multi-process job instead of running alone."""


class RunState(StrEnum):
    """Where a study's run stands, read from its directory (the ``status`` of results.csv)."""

    FINISHED = "finished"
    DIVERGED = "diverged"
    INCOMPLETE = "incomplete"
    """Started, not ended: it resumes from its checkpoint."""
    NEW = "new"


FINAL_STATES = (RunState.FINISHED, RunState.DIVERGED)
"""States a study does not run again."""


def run_state(run_dir: Path) -> RunState:
    if RunSummary.exists(run_dir):
        summary = RunSummary.read(run_dir)
        if summary.finished:
            return RunState.FINISHED
        if summary.stop_reason == StopReason.DIVERGED:
            return RunState.DIVERGED
        return RunState.INCOMPLETE
    return RunState.INCOMPLETE if run_dir.is_dir() else RunState.NEW


def check_specs(specs: Sequence[RunSpec], config: str, common: Sequence[str]) -> None:
    """Resolve every run's config and compare it with its directory's record, before any
    work; a ConfigError names the key and, for a changed recipe, the run directory."""
    for spec in specs:
        resolved = load_config(config, [*common, *spec.overrides()])
        try:
            RunRecord(spec.run_dir).check(resolved)
        except ConfigError as error:
            raise ConfigError(
                f"{error}\nThe study's recipe for this run changed since it ran: remove "
                f"{spec.run_dir} to rerun it, or give the study another --out"
            ) from None


@dataclass(frozen=True)
class Outcome:
    """What became of one run in this invocation."""

    spec: RunSpec
    state: str
    """:func:`run_state` afterwards."""
    ran: bool
    """False: skipped as final."""
    returncode: int | None = None
    seconds: float | None = None
    """Wall time of the trainer process (start-up included)."""


def _environment(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_ENV}
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_one(spec: RunSpec, config: str, common: Sequence[str], threads: int) -> Outcome:
    """Start (or resume) one run; the trainer's output goes to ``<run_dir>/train.log``."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        TRAINER_MODULE,
        "--config",
        config,
        "--set",
        *common,
        *spec.overrides(),
        "logging.progress_bar=false",
    ]
    tick = time.perf_counter()
    with open(spec.run_dir / LOG, "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        done = subprocess.run(
            command, stdout=log, stderr=subprocess.STDOUT, env=_environment(threads), check=False
        )
    return Outcome(
        spec,
        run_state(spec.run_dir),
        ran=True,
        returncode=done.returncode,
        seconds=time.perf_counter() - tick,
    )


def last_log_line(run_dir: Path) -> str:
    """The trainer's last words, for a failed run's report."""
    path = run_dir / LOG
    lines = path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
    return lines[-1] if lines else "(no output)"


def run_all(
    specs: Sequence[RunSpec],
    config: str,
    common: Sequence[str],
    *,
    jobs: int,
    threads: int,
    report: Callable[[int, int, Outcome], None],
) -> list[Outcome]:
    """Every spec through :func:`run_one`, ``jobs`` at a time; ``report(done, total, outcome)``
    after each. Finished runs are reported first, without starting anything."""
    outcomes, pending = [], []
    for spec in specs:
        state = run_state(spec.run_dir)
        if state in FINAL_STATES:
            outcomes.append(Outcome(spec, state, ran=False))
            report(len(outcomes), len(specs), outcomes[-1])
        else:
            pending.append(spec)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_one, spec, config, common, threads) for spec in pending]
        for future in as_completed(futures):
            outcomes.append(future.result())
            report(len(outcomes), len(specs), outcomes[-1])
    order = {spec: i for i, spec in enumerate(specs)}
    return sorted(outcomes, key=lambda outcome: order[outcome.spec])
