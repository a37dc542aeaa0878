"""launch/slurm_train.sbatch on a real Slurm cluster (``.ci/slurm_cluster.sh start`` brings up
one node on this machine): SIGTERM mid-run, both tasks checkpoint, the script requeues the
job, and the requeued job resumes and ends as the uninterrupted run does."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest

from tests.launch.conftest import (
    DEMO,
    HARD_TIMEOUT_S,
    INTERRUPT_AFTER,
    ROOT,
    checkpoint_written,
    launch_env,
    run_settings,
    summary,
    tail,
)

SBATCH = ["sbatch", "--parsable", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0"]
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL")


def slurm(*args: str, **options) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, **options)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


@pytest.fixture
def cluster() -> None:
    """Skip, saying why, where no Slurm cluster with a 2-CPU node takes jobs."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        pytest.skip("no Slurm client (sbatch, sinfo): `.ci/slurm_cluster.sh start` sets one up")
    try:
        done = subprocess.run(
            ["sinfo", "--noheader", "--format=%t %c"], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        pytest.skip("sinfo does not answer within 30 s: no Slurm controller reachable")
    if done.returncode != 0:
        pytest.skip(f"sinfo fails: {done.stderr.strip()}")
    nodes = [line.split() for line in done.stdout.splitlines()]
    if not any(
        state.rstrip("*~#").startswith(("idle", "mix")) and int(cpus) >= 2 for state, cpus in nodes
    ):
        pytest.skip(f"no Slurm node with 2 free CPUs takes jobs (sinfo: {done.stdout.strip()!r})")


def job_fields(job: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S*)", slurm("scontrol", "show", "job", "--oneliner", job)))


def wait_for_job(job: str, what: str, condition, log, deadline: float) -> dict[str, str]:
    """Poll the job until ``condition(fields)``; fail with its log if it ends or hangs first."""
    while True:
        fields = job_fields(job)
        if condition(fields):
            return fields
        if fields["JobState"] in ENDED:
            pytest.fail(f"job {job} ended {fields['JobState']} before {what}:\n{tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {HARD_TIMEOUT_S} s (job {job}):\n{tail(log)}")
        time.sleep(0.2)


def test_preempted_job_checkpoints_requeues_and_finishes_as_uninterrupted(
    cluster, tmp_path, demo_data, uninterrupted
):
    run_dir, log = tmp_path / "run", tmp_path / "slurm.out"
    job = slurm(
        *SBATCH, f"--output={log}", "launch/slurm_train.sbatch",
        *DEMO, *run_settings(run_dir, demo_data), cwd=ROOT, env=launch_env(),
    )  # fmt: skip
    deadline = time.monotonic() + HARD_TIMEOUT_S
    try:
        reached = checkpoint_written(run_dir, INTERRUPT_AFTER)
        wait_for_job(job, f"checkpoint {INTERRUPT_AFTER}", lambda _: reached(), log, deadline)
        slurm("scancel", "--signal=TERM", job)  # the steps' tasks, not the batch shell
        wait_for_job(
            job, "requeue",
            lambda f: int(f["Restarts"]) >= 1 and f["JobState"] == "PENDING", log, deadline,
        )  # fmt: skip
        # Slurm's requeue delay runs its course: skipping it (StartTime=now) let the first
        # attempt's late batch-completion message (exit 1) be taken for the second attempt's,
        # which then ended FAILED before printing a line (slurmctld.log: Allocate, then
        # _job_complete WEXITSTATUS 1 0.002 s later, no second launch in slurmd.log).
        fields = wait_for_job(job, "end", lambda f: f["JobState"] in ENDED, log, deadline)
    finally:
        if job_fields(job)["JobState"] not in ENDED:
            subprocess.run(["scancel", job], timeout=60)

    output = log.read_text()
    state = {key: fields[key] for key in ("JobState", "Reason", "ExitCode", "Restarts")}
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", (state, tail(log))
    assert f"requeueing job {job}" in output
    result = summary(run_dir)
    assert result["finished"], result
    # The requeued job resumed from the checkpoint that both tasks wrote on SIGTERM.
    resumed_step = int(re.search(r"step(\d+)$", result["resumed_from"]).group(1))
    assert resumed_step > INTERRUPT_AFTER, result["resumed_from"]
    assert len((run_dir / "starts.jsonl").read_text().splitlines()) == 2
    for key in ("steps", "epochs_done", "final_top1", "best_top1", "best_epoch"):
        assert result[key] == uninterrupted[key], (key, result[key], uninterrupted[key])
