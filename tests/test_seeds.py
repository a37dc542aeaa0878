"""derive_seed: distinct seeds for every use, the same in every process, in range."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adaact_dist._seeds import derive_seed

SEEDS = Path(__file__).resolve().parents[1] / "adaact_dist" / "_seeds.py"
# The purposes the package derives seeds for.
PURPOSES = (
    "shard-order",
    "wds-worker",
    "dali-pipeline",
    "dali-reader",
    "synthetic-patterns",
    "synthetic-train",
    "synthetic-val",
    "mixup",
    "global-rng",
    "loader-start",
)


def test_distinct_for_thousands_of_ranks_and_epochs():
    # Seed arithmetic gave rank 7 of epoch 0 and rank 0 of epoch 1 one seed on 8 GPUs.
    assert derive_seed(42, "loader-start", rank=7) != derive_seed(42, "loader-start", epoch=1)
    ranks, epochs = 4096, 1000
    seeds = np.fromiter(
        (
            derive_seed(42, "loader-start", rank=rank, epoch=epoch)
            for rank in range(ranks)
            for epoch in range(epochs)
        ),
        dtype=np.uint64,
        count=ranks * epochs,
    )
    assert np.unique(seeds).size == ranks * epochs


def test_distinct_across_purposes_coordinates_and_base_seeds():
    seeds = [
        derive_seed(base, purpose, rank=rank, worker=worker)
        for base in (0, 1)
        for purpose in PURPOSES
        for rank in range(64)
        for worker in range(16)
    ]
    assert len(set(seeds)) == len(seeds) == 2 * len(PURPOSES) * 64 * 16
    # Each coordinate has its own place: one unit in any of them is a different seed.
    coordinates = ("rank", "epoch", "worker", "step", "index")
    unit = {derive_seed(0, "mixup", **{name: 1}) for name in coordinates}
    assert len(unit | {derive_seed(1, "mixup"), derive_seed(0, "mixup")}) == len(coordinates) + 2
    assert derive_seed(1, "mixup", rank=2) != derive_seed(2, "mixup", rank=1)
    # A purpose is never read as a number, nor a number as part of a purpose.
    spelled = {derive_seed(1, "mixup/2"), derive_seed(2, "mixup/1"), derive_seed(1, "mixup1")}
    assert len(spelled | {derive_seed(1, "mixup", rank=2), derive_seed(1, "mixup")}) == 5
    # Steps on resume: thousands of steps of every rank, all distinct.
    steps = {derive_seed(3, "global-rng", rank=r, step=s) for r in range(64) for s in range(2000)}
    assert len(steps) == 64 * 2000


def test_same_in_every_process_whatever_the_hash_seed():
    calls = [(7, p, r, e) for p in PURPOSES for r in range(3) for e in range(3)]
    here = [derive_seed(base, p, rank=r, epoch=e) for base, p, r, e in calls]
    # The module alone (it needs only the standard library), without the package's torch.
    script = (
        "import json, runpy, sys\n"
        "derive_seed = runpy.run_path(sys.argv[1])['derive_seed']\n"
        "calls = json.loads(sys.argv[2])\n"
        "print(json.dumps([derive_seed(b, p, rank=r, epoch=e) for b, p, r, e in calls]))\n"
    )
    for hash_seed in ("1", "4242"):  # salts str hashes differently in each child
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", script, str(SEEDS), json.dumps(calls)],
            env=env, capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        assert json.loads(done.stdout) == here
    # And in every version: changing these would change every run's data order and
    # augmentation, so that a run resumed across the change would not continue exactly.
    assert derive_seed(42, "mixup", rank=3) == 7679063808558656677
    assert derive_seed(42, "dali-pipeline", rank=1, epoch=2, index=1, bits=31) == 735988006


@pytest.mark.parametrize("bits", [1, 8, 31, 32, 63, 64])
def test_in_range_and_using_every_bit(bits):
    seeds = [derive_seed(5, "wds-worker", worker=w, bits=bits) for w in range(2000)]
    assert 0 <= min(seeds) and max(seeds) < 2**bits
    assert max(seeds) >= 2 ** (bits - 1)  # the top bit is reached: the full width is used


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="purpose=''"):
        derive_seed(0, "")
    with pytest.raises(ValueError, match="bits=0"):
        derive_seed(0, "mixup", bits=0)
    with pytest.raises(ValueError, match="bits=65"):
        derive_seed(0, "mixup", bits=65)
    with pytest.raises(TypeError, match="epoch=1.5"):
        derive_seed(0, "mixup", epoch=1.5)
    with pytest.raises(ValueError, match="64 bits"):
        derive_seed(2**63, "mixup")
    assert derive_seed(0, "mixup", rank=np.int64(3)) == derive_seed(0, "mixup", rank=3)
