"""Checkpoint, kill, resume: the resumed run's records continue those of an uninterrupted run.

Real single-process runs of the launch script on a tiny model with every source of
randomness the trainer restores (drop-path, Mixup/CutMix streams, accumulation).
"""

from __future__ import annotations

import json
import re
import signal

import pytest
import torch

from tests.train.helpers import TINY, checkpoints, read_csv, start, train, wait_for, write_config

EPOCHS = 4  # 10 steps each; long enough to be killed well before the end


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run everything is compared with."""
    folder = tmp_path_factory.mktemp("reference")
    config = write_config(
        folder / "c.yaml",
        TINY,
        run={"output_dir": str(folder / "run")},
        schedule={"epochs": EPOCHS},
    )
    done = train("--config", str(config))
    assert done.returncode == 0, done.stderr
    return folder / "run"


def _config(tmp_path, **checkpoint):
    return write_config(
        tmp_path / "c.yaml",
        TINY,
        run={"output_dir": str(tmp_path / "run")},
        schedule={"epochs": EPOCHS},
        checkpoint=checkpoint,
    )


def _assert_same_records(run, reference):
    """Every step's loss and lr, every evaluation, every activation record: identical."""
    for name, columns in (
        ("metrics.csv", ("step", "epoch", "lr", "loss")),
        ("eval.csv", ("step", "epoch", "top1", "top5", "loss", "count")),
        ("activations.csv", ("step", "layer", "variance", "input_second_moment")),
    ):
        ours, theirs = read_csv(run / name), read_csv(reference / name)
        assert [r["step"] for r in ours] == [r["step"] for r in theirs], name
        for mine, ref in zip(ours, theirs, strict=True):
            for column in columns:
                if column in ("step", "epoch", "layer", "count"):
                    assert mine[column] == ref[column], (name, column, mine, ref)
                else:
                    assert float(mine[column] or 0) == pytest.approx(
                        float(ref[column] or 0), rel=1e-5, abs=1e-7
                    ), (name, column, mine["step"])
    summary = json.loads((run / "summary.json").read_text())
    expected = json.loads((reference / "summary.json").read_text())
    assert summary["finished"] and summary["resumed_from"]
    assert summary["final_top1"] == expected["final_top1"]
    assert summary["steps"] == expected["steps"] == EPOCHS * 10


def test_killed_run_resumes_as_if_never_stopped(tmp_path, reference):
    config = _config(tmp_path, every_steps=0)  # checkpoints at epoch ends only
    run = tmp_path / "run"
    process = start("--config", str(config))
    wait_for(lambda: checkpoints(run), process)
    process.send_signal(signal.SIGKILL)  # no chance to clean up
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert checkpoints(run)[0] == "step00000010"
    done = train("--config", str(config))  # same command, same directory: resumes
    assert done.returncode == 0, done.stderr
    assert "Resumed from" in done.stderr
    _assert_same_records(run, reference)


def test_sigterm_writes_a_loadable_checkpoint_and_exits_cleanly(tmp_path, reference):
    config = _config(tmp_path, every_steps=7)
    run = tmp_path / "run"
    process = start("--config", str(config))
    wait_for(lambda: checkpoints(run), process)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 0, output
    assert "Stop requested (SIGTERM on some rank): checkpointing" in output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stop_reason"] == "preempted" and not summary["finished"]
    newest = run / "checkpoints" / checkpoints(run)[-1]
    step = int(newest.name[4:])
    assert step == summary["steps"] and step > 7  # written at the stop, not the older one
    states = torch.load(newest / "mp_rank_00_model_states.pt", weights_only=False)
    assert states["trainer_state"]["global_step"] == step
    assert any(key.endswith("conv1.0.weight") for key in states["module"])
    done = train("--config", str(config))
    assert done.returncode == 0, done.stderr
    _assert_same_records(run, reference)


def test_nonfinite_loss_stops_clearly_and_keeps_the_last_good_checkpoint(tmp_path):
    config = write_config(
        tmp_path / "c.yaml",
        TINY,
        run={"output_dir": str(tmp_path / "run")},
        optim={"name": "sgd", "lr": 1.0e6},
        schedule={"warmup_epochs": 0},
        checkpoint={"every_steps": 1, "keep_last": 5},
    )
    done = train("--config", str(config))
    assert done.returncode == 1
    diverged = r"Non-finite loss in [12] micro-batch\(es\) over 1 rank\(s\) at step"
    assert re.search(diverged, done.stderr)
    assert "stopping before the optimizer step; the last good checkpoint is" in done.stderr
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stop_reason"] == "diverged"
    saved = checkpoints(run)
    assert saved and int(saved[-1][4:]) == summary["steps"]  # up to the last finite step
    assert str(run / "checkpoints" / saved[-1]) in done.stderr


def test_a_stop_on_an_epochs_last_step_keeps_the_evaluation_that_follows(tmp_path, reference):
    """Stopped at step 20 (the end of epoch 1), the next start evaluates epoch 1 first; the
    checkpoint of step 20 must then hold that state (epoch 2, its top-1), so that a second
    stop does not lose or repeat the evaluation."""
    config = _config(tmp_path)
    run = tmp_path / "run"
    for stop in (20, 21):
        done = train("--config", str(config), "--set", f"run.stop_after_steps={stop}")
        assert done.returncode == 0, done.stderr
    meta = json.loads((run / "checkpoints" / "step00000020" / "meta.json").read_text())
    evals = read_csv(run / "eval.csv")
    assert meta["epoch"] == 2 and meta["top1"] == float(evals[1]["top1"])
    assert [r["epoch"] for r in evals] == ["0", "1"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    done = train("--config", str(config))
    assert done.returncode == 0, done.stderr
    _assert_same_records(run, reference)
