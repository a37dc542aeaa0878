"""The emulated hosts of ``.ci/emulated_hosts.sh`` as the tests use them.

Host ``nodeK`` is a network namespace at 192.0.2.K with its own sshd and hostname; it shares
this machine's filesystem, so the repository and the virtual environment are at the same path
on every host. The hosts cannot be reached from the root namespace: a command that talks to
them runs on one of them, as :func:`on_host` builds it, the way an operator launches a job from
the first node of a cluster. Every ssh run on a host (DeepSpeed's ``ssh HOST hostname`` check,
pdsh's ssh) reads that host's ``/etc/ssh/ssh_config``, the test's identity and known hosts.

A host's sshd runs in the mount namespace that ``ip netns exec`` made for it (its /etc files
are bound there), and so does every session it starts, the ranks that pdsh launches included:
:func:`private_folder` mounts an empty tmpfs there, which gives that host alone a directory of
its own at a shared path, as a node-local scratch disk does on a cluster.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "emulated_hosts.sh"
STATE = Path("/var/lib/adaact-hosts")
START = ".ci/emulated_hosts.sh start 2 (make hosts; root)"


def node(k: int) -> str:
    return f"node{k}"


def unavailable(count: int = 2) -> str | None:
    """Why ``node1..node{count}`` cannot be used here, or None where they are up: made by
    the script, listed by ``ip netns``, and node1 reaching each by name over ssh."""
    if os.geteuid() != 0:
        return "entering the emulated hosts (ip netns exec) needs root"
    for tool in ("ip", "unshare", "nsenter", "pdsh"):
        if shutil.which(tool) is None:
            return f"no {tool} on PATH: {START} installs what it needs"
    try:
        made = int((STATE / "count").read_text())
    except (OSError, ValueError):
        return f"no emulated hosts ({STATE}/count missing): {START}"
    if made < count:
        return f"{made} emulated host(s) up, {count} needed: {START}"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = {line.split()[0] for line in listed.splitlines() if line.strip()}
    missing = [node(k) for k in range(1, count + 1) if node(k) not in names]
    if missing:
        return f"network namespace(s) {', '.join(missing)} missing: {START}"
    for k in range(1, count + 1):
        try:
            done = subprocess.run(
                on_host(node(1), ["ssh", node(k), "hostname"]),
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return f"ssh {node(1)} -> {node(k)} did not answer within 30 s"
        if done.returncode != 0 or done.stdout.strip() != node(k):
            return (
                f"ssh {node(1)} -> {node(k)} fails (status {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()!r}); {START} again"
            )
    return None


# Run by sh as `sh -c ON_HOST NAME COMMAND...`, in the mount namespace that `ip netns exec`
# makes for the command (mounts there stay there): the hostname, then an empty tmpfs over
# ~/.ssh (of the passwd entry, as ssh finds it) where the machine has one, since ssh reads
# ~/.ssh/config and keys before the host's /etc/ssh/ssh_config.
ON_HOST = (
    'hostname "$0" && dot=$(getent passwd "$(id -u)" | cut -d: -f6)/.ssh && '
    '{ [ ! -d "$dot" ] || mount -t tmpfs -o size=64k,mode=0700 adaact-hosts "$dot"; } && exec "$@"'
)


def on_host(name: str, command: list[str]) -> list[str]:
    """``command`` run on host ``name``: in its network namespace (whose /etc/hosts and
    /etc/ssh are that host's) under its own hostname, with the machine's ~/.ssh out of sight."""
    return ["ip", "netns", "exec", name, "unshare", "--uts", "sh", "-c", ON_HOST, name, *command]


def in_mounts_of(name: str, command: list[str]) -> list[str]:
    """``command`` run in the mount namespace of host ``name``'s sshd: the files that every
    session on that host sees (no network namespace: it runs from this machine)."""
    pid = (STATE / name / "sshd.pid").read_text().strip()
    return ["nsenter", "--target", pid, "--mount", *command]


@contextlib.contextmanager
def private_folder(name: str, path: Path) -> Iterator[None]:
    """An empty tmpfs over the folder ``path`` on host ``name`` only, for the block; the other
    hosts, and this machine, keep seeing the shared folder there. Fill it with
    :func:`in_mounts_of` (``cp``); it and all it holds go with the block."""
    mount = ["mount", "-t", "tmpfs", "-o", "size=256m,mode=0755", "adaact-private", str(path)]
    subprocess.run(in_mounts_of(name, mount), check=True, capture_output=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run(in_mounts_of(name, ["umount", "--lazy", str(path)]), timeout=30)


def processes_of(marker: str, count: int = 2) -> list[int]:
    """The processes on the hosts whose command line contains ``marker`` (a run's own folder)."""
    found = []
    for k in range(1, count + 1):
        pids = subprocess.run(["ip", "netns", "pids", node(k)], capture_output=True, text=True)
        for pid in pids.stdout.split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(pid))
    return found


def end_job(process: subprocess.Popen, marker: str, count: int = 2) -> None:
    """End a launch that is still running: SIGTERM to the DeepSpeed runner (which then has
    pdsh pkill the launch on every host), then SIGKILL to its session and to every process
    left on the hosts with ``marker`` in its command line."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    for _ in range(20):
        left = processes_of(marker, count)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.25)


def per_host(log: str) -> dict[str, str]:
    """A pdsh launch's output split by the ``nodeK: `` prefix that pdsh puts on each host's
    lines; lines of the runner itself fall under ``launcher``."""
    parts: dict[str, list[str]] = {}
    for line in log.splitlines():
        match = re.match(r"(node\d+): (.*)", line)
        host, text = (match.group(1), match.group(2)) if match else ("launcher", line)
        parts.setdefault(host, []).append(text)
    return {host: "\n".join(lines) for host, lines in parts.items()}


def sshd_logs(count: int = 2, lines: int = 20) -> str:
    out = []
    for k in range(1, count + 1):
        path = STATE / node(k) / "sshd.log"
        text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
        out.append(f"--- {path} ---\n" + "\n".join(text))
    return "\n".join(out)
