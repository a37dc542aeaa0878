"""One run directory for every host, or no start (invariant 10).

``run.output_dir`` must be the same directory on every node: each rank writes its part of
every checkpoint (its ZeRO optimizer shard, its RNG state), rank 0 finishes the checkpoint
and writes the records, and a resume reads every part back. A node-local scratch disk mounted
at the same path on every node looks right and is not: each node fills a directory of its
own, and the damage shows only at the first resume. Node-local *data* (the same shards at
the same path on every host, ``data.root``) is fine: only the run directory must be shared.

:func:`check_run_dir_shared` runs before any rank reads or writes the run directory (a node
that looked up a missing directory may cache the answer: NFS's negative lookups). Rank 0
writes a marker file with a random token into it, making the directory where it is missing;
one broadcast gives every rank the marker's name and token, every rank reads it back (a rank
that does not see it looks again for :data:`SETTLE_S`), and one all-gather of ``(host, saw
it)`` tells every rank which hosts cannot see it. All ranks then raise the same
:class:`~adaact_dist.train.config.ConfigValueError` on ``run.output_dir`` (exit status 2,
one ``config error:`` line on rank 0) naming those hosts and their ranks. Rank 0 removes the
marker, and the directories it made for it, whatever the outcome: a refused start leaves
the directory as it found it (a resumed run's included), an accepted one goes on as before.
Both collectives are bounded by ``distributed.timeout_s``. One process skips it all.
"""

from __future__ import annotations

import secrets
import socket
import time
from pathlib import Path

import torch.distributed as dist

from adaact_dist.train.config import ConfigValueError

SETTLE_S = 2.0
"""How long a rank that does not see the marker keeps looking (network filesystems' caches)."""
MARKER_PREFIX = ".shared-dir-check-"
HOSTS_SHOWN = 8


def check_run_dir_shared(run_dir: Path, value: str, *, rank: int, world_size: int) -> None:
    """Collective on ``world_size > 1``: raise :class:`ConfigValueError` on ``run.output_dir``
    (``value``, as configured) where some rank does not see the ``run_dir`` that rank 0 sees."""
    if world_size <= 1:
        return
    host = socket.gethostname()
    made: list[Path] = []
    box: list = [None]
    if rank == 0:
        box[0], made = _write_marker(run_dir, host)
    try:
        dist.broadcast_object_list(box, src=0)
        shown = box[0]["shown"]
        if box[0]["error"] is not None:
            raise ConfigValueError(
                "run.output_dir",
                value,
                f"a directory that rank 0 on {box[0]['host']} can write, but writing into "
                f"{shown} failed: {box[0]['error']}",
            )
        seen = rank == 0 or _sees(run_dir / box[0]["name"], box[0]["token"])
        views: list = [None] * world_size
        dist.all_gather_object(views, (host, seen))
    finally:
        if rank == 0:
            _remove(run_dir / box[0]["name"] if box[0].get("name") else None, made)
    blind: dict[str, list[int]] = {}
    for other, (name, saw) in enumerate(views):
        if not saw:
            blind.setdefault(name, []).append(other)
    if blind:
        raise ConfigValueError("run.output_dir", value, _requirement(blind, box[0]["host"], shown))


def _write_marker(run_dir: Path, host: str) -> tuple[dict, list[Path]]:
    """Rank 0: the marker written (the directories made for it, deepest first), or the error."""
    target = run_dir.absolute()
    made = []
    for folder in (target, *target.parents):
        if folder.exists():
            break
        made.append(folder)
    name, token = f"{MARKER_PREFIX}{secrets.token_hex(8)}", secrets.token_hex(16)
    message = {"host": host, "shown": str(target), "name": name, "token": token, "error": None}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / name, "x", encoding="utf-8") as marker:
            marker.write(token)
    except OSError as error:
        _remove(None, made)
        return {**message, "name": None, "error": f"{type(error).__name__}: {error}"}, []
    return message, made


def _sees(marker: Path, token: str) -> bool:
    deadline = time.monotonic() + SETTLE_S
    while True:
        try:
            if marker.read_text(encoding="utf-8") == token:
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _remove(marker: Path | None, made: list[Path]) -> None:
    if marker is not None:
        marker.unlink(missing_ok=True)
    for folder in made:  # only while empty: nothing another process put there is lost
        try:
            folder.rmdir()
        except OSError:
            break


def _requirement(blind: dict[str, list[int]], host0: str, shown: str) -> str:
    hosts = [f"{name} ({_ranks(ranks)})" for name, ranks in blind.items()]
    if len(hosts) > HOSTS_SHOWN:
        hosts = [*hosts[:HOSTS_SHOWN], f"{len(hosts) - HOSTS_SHOWN} more host(s)"]
    return (
        f"one directory that every host sees, but {', '.join(hosts)} cannot see what rank 0 "
        f"on {host0} wrote into {shown}: every rank writes its part of each checkpoint (its "
        "ZeRO optimizer shard, its RNG state) there, so give all hosts one directory at the "
        "same path on a shared filesystem (NFS, Lustre, GPFS...), not a node-local disk "
        "(node-local data under data.root is fine)"
    )


def _ranks(ranks: list[int]) -> str:
    """``[2, 3, 4, 7]`` -> ``ranks 2-4, 7``."""
    spans: list[list[int]] = []
    for rank in ranks:
        if spans and rank == spans[-1][1] + 1:
            spans[-1][1] = rank
        else:
            spans.append([rank, rank])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
    return f"rank {text}" if len(ranks) == 1 else f"ranks {text}"
