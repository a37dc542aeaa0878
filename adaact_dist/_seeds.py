"""Every seed a run uses, derived from its one base seed by :func:`derive_seed`.

A seed is a hash of the base seed, a purpose (what the seed drives) and the coordinates of its
use (rank, epoch, loader worker, step, index). Why a hash: arithmetic such as
``seed * 1000 + epoch * 7 + rank`` collides (rank 7 of epoch 0 and rank 0 of epoch 1 on an
8-GPU node get the same seed) and gives neighbouring streams neighbouring seeds; a hash gives
unrelated seeds to any two distinct sets of parts. Why not ``hash()``: string hashes are salted
per process (``PYTHONHASHSEED``), while every rank, loader worker and resumed run must derive
the same seed from the same parts.
"""

from __future__ import annotations

import hashlib
import struct

__all__ = ["derive_seed"]

_COORDINATES = ("base", "rank", "epoch", "worker", "step", "index")
_PACKED = struct.Struct(f"<{len(_COORDINATES)}q")  # fixed width: the purpose is what precedes


def derive_seed(
    base: int,
    purpose: str,
    *,
    rank: int = 0,
    epoch: int = 0,
    worker: int = 0,
    step: int = 0,
    index: int = 0,
    bits: int = 63,
) -> int:
    """The seed in ``[0, 2**bits)`` of one use of the base seed.

    Coordinates are keywords with fixed places in the hashed key, so a purpose never collides
    with a number and ``rank=1`` never with ``epoch=1``; those that do not apply stay 0. The
    result depends on nothing but the arguments (not on the process, machine or Python build),
    which is what lets a resumed run re-derive the seeds of the run it continues.

    Args:
        base: The run's seed (``run.seed``, a loader's ``seed``).
        purpose: What the seed drives (``"mixup"``, ``"shard-order"``...); streams of
            different purposes are unrelated even at equal coordinates.
        rank, epoch, worker, step, index: Where it is used, each a signed 64-bit integer;
            ``index`` numbers whatever sequence the purpose has (a batch, a sample, a
            rebuilt pipeline).
        bits: Width of the result: 63 fits any signed 64-bit seed (torch, Python's
            ``random``), 31 a signed 32-bit one.
    """
    if not isinstance(purpose, str) or not purpose:
        raise ValueError(f"Invalid purpose={purpose!r}: must be a non-empty string")
    if not isinstance(bits, int) or not 1 <= bits <= 64:
        raise ValueError(f"Invalid bits={bits!r}: must be an integer in [1, 64]")
    parts = (base, rank, epoch, worker, step, index)
    try:
        packed = _PACKED.pack(*parts)
    except struct.error:
        for name, value in zip(_COORDINATES, parts):
            if not hasattr(type(value), "__index__"):
                raise TypeError(f"Invalid {name}={value!r}: must be an integer") from None
        raise ValueError(
            f"Invalid seed parts {dict(zip(_COORDINATES, parts))}: must fit in 64 bits signed"
        ) from None
    digest = hashlib.blake2b(purpose.encode() + packed, digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - bits)
