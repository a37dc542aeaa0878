"""Real multi-process runs: the deepspeed launcher starts ``worker.py`` on 1 or 2 CPU ranks
(or, for the NCCL tests, on one GPU).

Launching costs more than the runs, so each fixture launches one suite once per session
and the tests read what its rank 0 saved. A failure names the scenario it happened in and
shows that scenario's log; a launch is killed as hung only when it stops printing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from adaact_dist.distributed import convert_to_universal

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")
SCENARIO_MARK = "[scenario] "  # what worker.py prints as each scenario starts
# A launch that prints nothing for this long has hung: it is killed and the test fails. Slow
# is not hung: a loaded machine stretches every scenario, and each one prints as it starts.
SILENCE_S = 240


def launch(
    suite: str, out: Path, ranks: int, *extra: str, launcher: str = "deepspeed"
) -> subprocess.CompletedProcess:
    """Run the suite on ``ranks`` ranks; stdout holds both streams of every rank."""
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
    log_path = out / f"{suite}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
        returncode = _wait_while_it_speaks(process, log_path)
    return subprocess.CompletedProcess(command, returncode, log_path.read_text(), "")


def _wait_while_it_speaks(process: subprocess.Popen, log_path: Path) -> int:
    """The launch's exit status; kill it (every rank) after ``SILENCE_S`` without output."""
    size, quiet_since = -1, time.monotonic()
    while True:
        try:
            return process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        if log_path.stat().st_size != size:
            size, quiet_since = log_path.stat().st_size, time.monotonic()
        elif time.monotonic() - quiet_since > SILENCE_S:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(
                f"{log_path.name}: no output for {SILENCE_S} s, killed as hung in "
                f"{_last_scenario(log_path.read_text())}:\n{_tail(log_path.read_text())}"
            )


def _last_scenario(log: str) -> str:
    marks = [line for line in log.splitlines() if line.startswith(SCENARIO_MARK)]
    return f"scenario {marks[-1][len(SCENARIO_MARK) :]}" if marks else "its start-up"


def _tail(log: str, chars: int = 8000) -> str:
    """The log from the last scenario's start (at most ``chars`` of it)."""
    start = log.rfind(SCENARIO_MARK)
    return log[max(start, 0) :][-chars:]


def run_suite(
    suite: str, out: Path, ranks: int, *extra: str, launcher: str = "deepspeed"
) -> list[dict]:
    done = launch(suite, out, ranks, *extra, launcher=launcher)
    if done.returncode != 0:
        pytest.fail(
            f"suite {suite} failed in {_last_scenario(done.stdout)} (status {done.returncode}); "
            f"its log:\n{_tail(done.stdout)}"
        )
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


@pytest.fixture(scope="session", params=[1, 2], ids=["1gpu", "2gpus"])
def gpu_suite(out_dir, request) -> list[dict]:
    """One and two GPU ranks over NCCL: ZeRO 0/1/2 in fp32, bf16 and fp16 with dynamic loss
    scaling, each low-precision run also with an overflow step; accumulation (2 on one rank, 1
    on two) makes the global batch of the 2-rank CPU suite."""
    ranks = request.param
    if not torch.cuda.is_available():
        pytest.skip(
            "NCCL needs a CUDA GPU; none here (the CPU suites run on gloo; "
            "python -m benchmarks.gpu_check runs these on one)"
        )
    if torch.cuda.device_count() < ranks:
        pytest.skip(f"{ranks} NCCL ranks need {ranks} GPUs; {torch.cuda.device_count()} here")
    return run_suite(f"gpu{ranks}", out_dir, ranks, "--device", "cuda")
