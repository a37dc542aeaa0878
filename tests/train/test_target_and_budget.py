"""Runs measured in steps: evaluation on a geometric grid of steps, an end at a validation
target or at ``schedule.max_steps`` mid-epoch, and the gradient noise scale's norms."""

from __future__ import annotations

import json
import math

import pytest

from tests.train.helpers import read_csv, train, write_config

DIGITS = {
    "run": {"name": "digits", "seed": 0},
    "model": {
        "name": "resnet10t",
        "num_classes": 10,
        "channels_last": False,
        "kwargs": {"channels": [8, 16, 32, 64], "stem_width": 8},
    },
    "data": {
        "backend": "memory",
        "builtin": "digits",
        "image_size": 16,
        "global_batch_size": 64,
        "num_workers": 0,
    },
    "augmentation": {"auto_augment": None, "scale": [0.5, 1.0], "hflip": 0.0, "crop_pct": 1.0},
    "optim": {"name": "adaact", "lr": 0.4, "weight_decay": 0.0005},
    "schedule": {"max_steps": 300, "name": "constant", "warmup_steps": 3},
    "eval": {"geometric_spacing": 0.1},
    "distributed": {"zero_stage": 0, "precision": "fp32", "timeout_s": 120},
    "checkpoint": {"every_steps": 0, "keep_last": 1, "keep_best": False},
    "logging": {"activation_every_steps": 0, "progress_bar": False, "plots": False},
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("digits")


def _run(tmp_path, data_root, name: str, **sections) -> tuple[dict, list[dict]]:
    sections.setdefault("data", {})
    sections["data"] = {**DIGITS["data"], "root": str(data_root), **sections["data"]}
    config = write_config(tmp_path / f"{name}.yaml", DIGITS, **sections)
    run_dir = tmp_path / name
    done = train("--config", str(config), "--set", f"run.output_dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary, read_csv(run_dir / "eval.csv")


def test_a_run_ends_at_the_first_evaluation_that_reaches_its_target(tmp_path, data_root):
    summary, evals = _run(
        tmp_path,
        data_root,
        "target",
        run={"target_top1": 60.0},
        eval={"geometric_spacing": 0.1, "every_epochs": 100},  # no epoch-end evaluations
    )
    steps = [int(row["step"]) for row in evals]
    top1 = [float(row["top1"]) for row in evals]
    assert summary["stop_reason"] == "target_reached" and summary["finished"]
    assert top1[-1] >= 60.0 and max(top1[:-1]) < 60.0, "the first evaluation that reached it"
    assert summary["target_steps"] == summary["steps"] == steps[-1] < 300
    assert summary["target_images"] == steps[-1] * 64
    # The geometric grid: each gap is 10% of the steps done, at least one step.
    gaps = [b - a for a, b in zip([0, *steps], steps)]
    assert gaps == [max(1, math.floor(0.1 * s)) for s in steps]
    assert (tmp_path / "target" / "checkpoints").is_dir(), "the model at the target is kept"


def test_a_step_budget_ends_mid_epoch_with_a_final_evaluation(tmp_path, data_root):
    # 1,437 images at batch 64: 22 steps per epoch; 30 steps end 8 steps into epoch 1.
    summary, evals = _run(
        tmp_path,
        data_root,
        "budget",
        run={"target_top1": 100.0},
        schedule={"max_steps": 30},
        eval={"geometric_spacing": 0.0},
        data={"micro_batch_size": 16},
        logging={"noise_scale_every_steps": 4},
    )
    assert summary["stop_reason"] == "completed" and summary["target_steps"] is None
    assert (summary["steps"], summary["total_steps"], summary["epochs"]) == (30, 30, 2)
    assert [(int(r["step"]), int(r["epoch"])) for r in evals] == [(22, 0), (30, 1)]
    metrics = read_csv(tmp_path / "budget" / "metrics.csv")
    assert [float(r["lr"]) for r in metrics[:4]] == pytest.approx([0.0, 0.4 / 3, 0.8 / 3, 0.4])
    noise = read_csv(tmp_path / "budget" / "noise_scale.csv")
    assert [int(r["step"]) for r in noise] == list(range(0, 30, 4))
    for row in noise:
        assert (row["small_batch"], row["big_batch"]) == ("16", "64")
        # A micro-batch's gradient is noisier than the mean of four: larger on average.
        assert float(row["small_sq_norm"]) > float(row["big_sq_norm"]) > 0


def test_what_a_measured_run_cannot_do_is_refused_before_training(tmp_path, data_root):
    config = write_config(
        tmp_path / "bad.yaml",
        DIGITS,
        data={**DIGITS["data"], "root": str(data_root)},
        logging={"noise_scale_every_steps": 1},
    )
    done = train("--config", str(config), "--set", f"run.output_dir={tmp_path / 'bad'}")
    assert done.returncode == 2
    assert "logging.noise_scale_every_steps" in done.stderr
    assert "data.micro_batch_size below data.global_batch_size" in done.stderr
    done = train(
        "--config", str(config), "--set", f"run.output_dir={tmp_path / 'bad2'}",
        "logging.noise_scale_every_steps=0", "schedule.max_steps=3",
    )  # fmt: skip
    assert done.returncode == 2 and "schedule.warmup_steps" in done.stderr
