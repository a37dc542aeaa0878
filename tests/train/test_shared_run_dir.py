"""A run directory that some rank cannot see is refused at start, with nothing lost (invariant 10).

Two ranks of the launch script on this machine, started as torchrun starts them (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``...), the tiny synthetic recipe. Rank 1 runs in a mount and
UTS namespace of its own (``unshare``) with an empty tmpfs over the folder that holds the run
directories, and the hostname ``elsewhere``: the same path is another directory there, as on
a node whose ``run.output_dir`` is a node-local scratch disk. The multi-host case, ranks on
another emulated host started over ssh, is in ``tests/launch/test_multinode.py``.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from adaact_dist.train.shared_run_dir import MARKER_PREFIX, _ranks
from tests.train.helpers import PYTHON, ROOT, TINY, TRAIN, env, free_port, write_config

ELSEWHERE = "elsewhere"
# sh -c PRIVATE FOLDER COMMAND...: the hostname, then a tmpfs over FOLDER, then COMMAND.
PRIVATE = 'hostname "$1" && mount -t tmpfs adaact-test "$0" && shift && exec "$@"'


@functools.cache
def unshare() -> list[str]:
    """``unshare`` for a private mount and UTS namespace, as root or through a user namespace."""
    tool = shutil.which("unshare")
    if tool is None:
        pytest.skip("no unshare (util-linux) on PATH")
    command = [tool, "--mount", "--uts", "--propagation", "private"]
    if os.geteuid() != 0:
        command.insert(1, "--map-root-user")
    probe = subprocess.run(
        [*command, "sh", "-c", "mount -t tmpfs probe /mnt && hostname x"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip(f"{' '.join(command)} cannot mount here: {probe.stderr.decode().strip()}")
    return command


def fingerprint(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its content (None for a directory)."""
    return {
        str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes()
        for path in sorted(folder.rglob("*"))
    }


def launch_two_ranks(config: Path, run_dir: Path, private: Path, log: Path) -> list[int]:
    """Both ranks of one start, rank 1 with ``private`` a tmpfs of its own; their statuses."""
    port = free_port()
    processes = []
    for rank in (0, 1):
        rank_env = {
            **env(), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "GLOO_SOCKET_IFNAME": "lo",  # the loopback, whatever the hostname resolves to
        }  # fmt: skip
        command = [PYTHON, str(TRAIN), "--config", str(config)]
        command += ["--set", f"run.output_dir={run_dir}"]
        if rank == 1:
            command = [*unshare(), "sh", "-c", PRIVATE, str(private), ELSEWHERE, *command]
        with open(log.with_suffix(f".rank{rank}"), "w") as out:
            processes.append(
                subprocess.Popen(command, cwd=ROOT, env=rank_env, stdout=out, stderr=out)
            )
    deadline = time.monotonic() + 120
    statuses = []
    for process in processes:
        try:
            statuses.append(process.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            pytest.fail(f"the ranks still ran after 120 s:\n{outputs(log)}")
    return statuses


def outputs(log: Path) -> str:
    return "\n".join(
        f"--- rank {rank} ---\n{log.with_suffix(f'.rank{rank}').read_text(errors='replace')}"
        for rank in (0, 1)
    )


def test_a_run_directory_that_one_rank_cannot_see_stops_every_rank_and_loses_nothing(tmp_path):
    """Two starts side by side: one continuing a run (its directory must stay as it was),
    one new (its directory must not be left behind)."""
    unshare()  # skip early where namespaces are out of reach
    shared = tmp_path / "shared"  # what rank 1 sees as an empty tmpfs
    resumed, fresh = shared / "resumed", shared / "fresh" / "run"
    checkpoint = resumed / "checkpoints" / "step00000007"
    checkpoint.mkdir(parents=True)
    (resumed / "checkpoints" / ".tmp-step00000009").mkdir()  # a start would clear this
    (resumed / "checkpoints" / ".tmp-step00000009" / "rank0.pt").write_bytes(b"partial")
    (checkpoint / "meta.json").write_text('{"step": 7}')
    (resumed / "config.yaml").write_text("run: {name: tiny}\n")
    (resumed / "starts.jsonl").write_text('{"world_size": 2}\n')
    before = fingerprint(resumed)
    config = write_config(tmp_path / "c.yaml", TINY, run={"name": "tiny"})
    results = {name: (run_dir, tmp_path / f"{name}.log")
               for name, run_dir in (("resumed", resumed), ("fresh", fresh))}  # fmt: skip
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {
            name: pool.submit(launch_two_ranks, config, run_dir, shared, log)
            for name, (run_dir, log) in results.items()
        }
        statuses = {name: future.result() for name, future in futures.items()}
    for name, (run_dir, log) in results.items():
        assert statuses[name] == [2, 2], f"{name}: {statuses[name]}\n{outputs(log)}"
        rank0 = log.with_suffix(".rank0").read_text()
        rank1 = log.with_suffix(".rank1").read_text()
        errors = [line for line in rank0.splitlines() if line.startswith("config error:")]
        assert errors == [
            f"config error: Invalid run.output_dir='{run_dir}' in --set run.output_dir={run_dir}:"
            f" must be one directory that every host sees, but {ELSEWHERE} (rank 1) cannot see"
            f" what rank 0 on {os.uname().nodename} wrote into {run_dir}: every rank writes its"
            " part of each checkpoint (its ZeRO optimizer shard, its RNG state) there, so give"
            " all hosts one directory at the same path on a shared filesystem (NFS, Lustre,"
            " GPFS...), not a node-local disk (node-local data under data.root is fine)"
        ], outputs(log)
        assert "config error" not in rank1  # one line, on rank 0
        assert "Traceback" not in rank0 + rank1
    assert fingerprint(resumed) == before  # no marker, no start recorded, no partial cleared
    assert not any(path.name.startswith(MARKER_PREFIX) for path in shared.rglob("*"))
    assert not (shared / "fresh").exists()  # made for the marker, removed with it


def test_rank_lists_name_spans() -> None:
    assert _ranks([1]) == "rank 1"
    assert _ranks([2, 3, 4, 7, 9, 10]) == "ranks 2-4, 7, 9-10"
