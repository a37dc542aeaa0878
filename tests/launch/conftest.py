"""Real launches of a short demo on 2 CPU ranks: the recipe, the uninterrupted run that an
interrupted one must match, and a wait that turns a hang into a failure with the log."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRAIN = str(ROOT / "launch" / "train_imagenet.py")

# 5 epochs of 22 steps: the interruption comes once step INTERRUPT_AFTER's checkpoint is on
# disk, some 70 steps before the end.
DEMO = [
    "--config", "demo", "--set", "schedule.epochs=5", "checkpoint.every_steps=20",
    "logging.progress_bar=false", "logging.plots=false",
]  # fmt: skip
INTERRUPT_AFTER = 40
# Generous for a loaded 2-core machine (an uninterrupted run takes under a minute alone); a
# job still running then has hung.
HARD_TIMEOUT_S = 600


def run_settings(run_dir: Path, data_root: Path) -> list[str]:
    return [f"run.output_dir={run_dir}", f"data.root={data_root}"]


def launch_env() -> dict[str, str]:
    """This environment's python first on PATH, one thread per rank, no launcher variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env["OMP_NUM_THREADS"] = "1"
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(*args: str, restarts: int = 0) -> list[str]:
    """torchrun's static rendezvous on this node, as an operator types it."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--max-restarts", str(restarts), "--master-port", str(free_port()), TRAIN, *args,
    ]  # fmt: skip


def tail(path: Path, lines: int = 60) -> str:
    if not path.exists():
        return f"({path} was never written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_for(
    condition: Callable[[], bool], what: str, log: Path, deadline: float, process=None
) -> None:
    """Poll ``condition`` until ``deadline`` (a ``time.monotonic()`` value); fail naming
    ``what`` with the log's tail if it never holds, or if ``process`` ends first."""
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the job ended (status {process.returncode}) before {what}:\n{tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {HARD_TIMEOUT_S} s:\n{tail(log)}")
        time.sleep(0.1)


def start_logged(command: list[str], log: Path) -> subprocess.Popen:
    """``command`` from the repository root, its output in ``log``, in a session of its own
    so that :func:`finish` can kill every process of a hung job."""
    with open(log, "w") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=launch_env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def finish(process: subprocess.Popen, log: Path, deadline: float) -> int:
    """The job's exit status; past ``deadline`` it is killed (its whole session) as hung."""
    try:
        return process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"the job hung: still running after {HARD_TIMEOUT_S} s, killed:\n{tail(log)}")


def checkpoint_written(run_dir: Path, step: int) -> Callable[[], bool]:
    return lambda: (run_dir / "checkpoints" / f"step{step:08d}").is_dir()


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """One digits data root for every launch of the session (built by the first)."""
    return tmp_path_factory.mktemp("demo-data")


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, demo_data) -> dict:
    """The summary of the short demo run start to end under torchrun, 2 CPU ranks."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    run_dir, log = folder / "run", folder / "torchrun.log"
    command = torchrun(*DEMO, *run_settings(run_dir, demo_data))
    deadline = time.monotonic() + HARD_TIMEOUT_S
    status = finish(start_logged(command, log), log, deadline)
    assert status == 0, tail(log)
    result = summary(run_dir)
    assert result["finished"] and result["steps"] > INTERRUPT_AFTER, result
    return result
