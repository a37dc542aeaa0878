"""Real multi-process runs: the deepspeed launcher starts ``worker.py`` on 1 or 2 CPU ranks.

Launching costs more than the runs, so each fixture launches one suite once per session
and the tests read what its rank 0 saved.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adaact_dist.distributed import convert_to_universal

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")
HANG_GUARD_S = 300  # a suite that runs past this has hung: the test fails, it never waits


def launch(
    suite: str, out: Path, ranks: int, *extra: str, launcher: str = "deepspeed"
) -> subprocess.CompletedProcess:
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    if launcher == "deepspeed":
        runner = ["deepspeed.launcher.runner", "--num_gpus", str(ranks)]
    else:
        runner = ["torch.distributed.run", "--nproc_per_node", str(ranks)]
    command = [
        sys.executable, "-m", *runner, "--master_port", str(port),
        str(WORKER), "--suite", suite, "--out", str(out), *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S
    )


def run_suite(suite: str, out: Path, ranks: int, launcher: str = "deepspeed") -> list[dict]:
    done = launch(suite, out, ranks, launcher=launcher)
    if done.returncode != 0:
        log = done.stdout[-3000:] + "\n--- stderr ---\n" + done.stderr[-6000:]
        pytest.fail(f"suite {suite} failed (status {done.returncode}):\n{log}")
    return torch.load(out / f"{suite}.pt", weights_only=False)


@pytest.fixture(scope="session")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="session")
def main_suite(out_dir) -> list[dict]:
    """Per rank: stage 0/1/2 fp32 runs, k=3 runs, bf16 with and without an overflow step,
    save/resume at step 3, refusals."""
    return run_suite("main", out_dir, ranks=2)


@pytest.fixture(scope="session")
def one_rank_suite(out_dir, main_suite) -> list[dict]:
    for name in ("s1", "bf16_s1"):
        convert_to_universal(out_dir / f"ckpt_{name}" / "step3")
    return run_suite("one_rank", out_dir, ranks=1)


@pytest.fixture(scope="session")
def two_from_one_suite(out_dir, one_rank_suite) -> list[dict]:
    convert_to_universal(out_dir / "ckpt_one" / "step3")
    return run_suite("two_from_one", out_dir, ranks=2)


@pytest.fixture(scope="session")
def ddp_suite(out_dir) -> list[dict]:
    """Plain torch.distributed: DistributedDataParallel + TorchStatsSync, under torchrun."""
    return run_suite("ddp", out_dir, ranks=2, launcher="torchrun")
