"""Shared by the trainer tests: tiny configs and real launches in subprocesses."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "launch" / "train_imagenet.py"
PYTHON = sys.executable

# A model and data small enough for a CPU run of a few seconds, with every source of
# randomness the trainer must restore on resume: drop-path, Mixup/CutMix, accumulation.
TINY = {
    "run": {"name": "tiny", "seed": 3},
    "model": {
        "name": "resnet10t",
        "num_classes": 4,
        "channels_last": False,
        "drop_path_rate": 0.1,
        "kwargs": {"channels": [8, 16, 32, 64], "stem_width": 8},
    },
    "data": {
        "backend": "synthetic",
        "image_size": 16,
        "global_batch_size": 32,
        "micro_batch_size": 16,
        "synthetic_train_samples": 320,
        "synthetic_val_samples": 37,
    },
    "augmentation": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0},
    "optim": {"name": "adaact", "lr": 0.05, "weight_decay": 0.001},
    "schedule": {"epochs": 3, "warmup_epochs": 1},
    "distributed": {"zero_stage": 0, "precision": "fp32", "timeout_s": 120},
    "checkpoint": {"every_steps": 7, "keep_last": 2},
    "logging": {"activation_every_steps": 3, "progress_bar": False, "plots": False},
}


def write_config(path: Path, base: dict | None = None, **sections: dict) -> Path:
    config = {k: dict(v) for k, v in (base or TINY).items()}
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(config))
    return path


def env() -> dict[str, str]:
    """A clean single-process environment (no inherited launcher variables)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    clean["PYTHONPATH"] = str(ROOT)
    clean.setdefault("OMP_NUM_THREADS", "1")
    return clean


def train(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, str(TRAIN), *args],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, str(TRAIN), *args],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(predicate, process: subprocess.Popen, timeout: float = 180) -> None:
    """Poll until ``predicate()``; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(
                f"run ended (rc {process.returncode}) first:\n{process.stdout.read()}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def checkpoints(run_dir: Path) -> list[str]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("step"))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
