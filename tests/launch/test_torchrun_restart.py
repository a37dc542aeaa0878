"""A worker killed with SIGKILL mid-run: torchrun's first (and only) restart resumes from the
newest checkpoint and ends as the uninterrupted run does. Before the restarted group met
in keys of its own attempt, it read the killed attempt's addresses from torchrun's store and
failed (``Gloo connectFullMesh failed``) or hung."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist

from adaact_dist.distributed.process_group import elastic_attempt_store
from tests.launch.conftest import (
    DEMO,
    HARD_TIMEOUT_S,
    INTERRUPT_AFTER,
    checkpoint_written,
    finish,
    run_settings,
    start_logged,
    summary,
    tail,
    torchrun,
    wait_for,
)


def worker_of_rank(agent: int, rank: int) -> int:
    """The pid of the first attempt's worker with ``rank`` among torchrun's children."""
    children = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ and b"TORCHELASTIC_RESTART_COUNT=0" in environ:
            return int(pid)
    pytest.fail(f"no worker of rank {rank} among torchrun's children {children}")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_killed_rank_is_recovered_by_the_first_restart(tmp_path, demo_data, uninterrupted):
    run_dir, log = tmp_path / "run", tmp_path / "torchrun.log"
    command = torchrun(*DEMO, *run_settings(run_dir, demo_data), restarts=1)
    deadline = time.monotonic() + HARD_TIMEOUT_S
    process = start_logged(command, log)
    wait_for(
        checkpoint_written(run_dir, INTERRUPT_AFTER),
        f"checkpoint at step {INTERRUPT_AFTER}",
        log,
        deadline,
        process,
    )
    os.kill(worker_of_rank(process.pid, 1), signal.SIGKILL)
    status = finish(process, log, deadline)

    assert status == 0, f"torchrun --max-restarts 1 did not recover:\n{tail(log)}"
    result = summary(run_dir)
    assert result["finished"] and result["resumed_from"], result
    starts = (run_dir / "starts.jsonl").read_text().splitlines()
    assert len(starts) == 2, "one start and one restart"
    for key in ("steps", "epochs_done", "final_top1", "best_top1", "best_epoch"):
        assert result[key] == uninterrupted[key], (key, result[key], uninterrupted[key])


def test_each_attempt_meets_under_its_own_keys_of_the_agents_store(monkeypatch):
    agent = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(agent.port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    attempts = []
    for count in ("0", "1"):
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", count)
        attempts.append(elastic_attempt_store(timedelta(seconds=30)))
    attempts[0].set("default_pg/0", "where the killed rank listened")
    assert not attempts[1].check(["default_pg/0"])
    # Workers that host their own store (c10d with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1).
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    assert elastic_attempt_store(timedelta(seconds=30)) is None
