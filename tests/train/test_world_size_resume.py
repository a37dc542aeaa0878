"""A run resumes on another number of ranks: 2 -> 1 and 1 -> 2, through the launch script.

ZeRO-1 checkpoints hold one optimizer partition per rank; the trainer converts such a
checkpoint to the universal layout once (beside it, the original untouched) and continues
the same schedule.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from adaact_dist.train.schedule import LRSchedule
from tests.train.helpers import PYTHON, ROOT, TINY, env, free_port, read_csv, train, write_config

DEEPSPEED = Path(PYTHON).parent / "deepspeed"
STEPS = 30  # 3 epochs of 10 steps


def two_ranks(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(DEEPSPEED), "--num_gpus", "2", "--master_port", str(free_port()),
            "launch/train_imagenet.py", *args,
        ],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def one_rank(*args: str) -> subprocess.CompletedProcess:
    return train(*args, timeout=300)


LAUNCH = {1: one_rank, 2: two_ranks}


def expected_lrs() -> list[float]:
    schedule = LRSchedule(
        peak_lr=0.05, total_steps=STEPS, warmup_steps=10, warmup_lr=0.0, min_lr=0.0, shape="cosine"
    )
    return [schedule.lr(step) for step in range(STEPS)]


@pytest.mark.parametrize("first, second", [(2, 1), (1, 2)])
def test_resume_on_another_world_size_converts_once_and_keeps_the_schedule(tmp_path, first, second):
    run = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml",
        TINY,
        run={"output_dir": str(run)},
        distributed={"zero_stage": 1, "precision": "fp32", "timeout_s": 120},
        checkpoint={"every_steps": 7, "keep_last": 10},  # step 5 stays for the reuse below
    )
    started = LAUNCH[first]("--config", str(config), "--set", "run.stop_after_steps=5")
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    stopped = run / "checkpoints" / "step00000005"
    original = {p.name: p.stat().st_mtime_ns for p in stopped.rglob("*")}

    resumed = LAUNCH[second]("--config", str(config))
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-6000:]
    assert f"was written by {first} ranks, this job has {second}: converted it once" in output
    assert f"Resumed from {stopped}: step 5" in output
    assert {p.name: p.stat().st_mtime_ns for p in stopped.rglob("*")} == original
    assert (run / "checkpoints" / "universal" / "step00000005" / "zero").is_dir()

    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == STEPS and summary["world_size"] == second
    rows = read_csv(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(STEPS))
    assert [float(r["lr"]) for r in rows] == pytest.approx(expected_lrs(), rel=1e-6, abs=1e-9)
    starts = [json.loads(line) for line in (run / "starts.jsonl").read_text().splitlines()]
    assert [s["world_size"] for s in starts] == [first, second]

    if second == 1:  # the conversion is kept and reused when that checkpoint loads again
        again = one_rank(
            "--config", str(config), "--set", f"checkpoint.resume={stopped}",
            "run.stop_after_steps=6",
        )  # fmt: skip
        assert again.returncode == 0, again.stderr[-3000:]
        assert "reusing its universal conversion" in again.stderr
