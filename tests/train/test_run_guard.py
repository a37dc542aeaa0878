"""A run directory keeps its run: guarded resume, checkpoint fallback, clear errors for bad input.

Real single-process runs of the launch script on the tiny synthetic recipe.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml

from tests.train.helpers import TINY, checkpoints, train, write_config

EXIT_CONFIG = 2


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped cleanly at step 8 (checkpoints at steps 7 and 8); tests copy it."""
    folder = tmp_path_factory.mktemp("stopped")
    config = write_config(folder / "c.yaml", TINY, run={"output_dir": str(folder / "run")})
    done = train("--config", str(config), "--set", "run.stop_after_steps=8")
    assert done.returncode == 0, done.stderr
    assert checkpoints(folder / "run") == ["step00000007", "step00000008"]
    return config, folder / "run"


@pytest.fixture
def run(stopped_run, tmp_path):
    """A private copy of the stopped run, and the command line that continues it."""
    config, original = stopped_run
    copy = tmp_path / "run"
    shutil.copytree(original, copy)
    return copy, ["--config", str(config), "--set", f"run.output_dir={copy}"]


def starts(run) -> list[dict]:
    return [json.loads(line) for line in (run / "starts.jsonl").read_text().splitlines()]


def test_a_changed_meaning_stops_the_start_and_overwrites_nothing(run):
    """The issue's cases, in one start: a new global batch, optimizer and model."""
    run_dir, command = run
    config_before = (run_dir / "config.yaml").read_text()
    done = train(*command, "data.global_batch_size=64", "optim.name=sgd", "model.name=resnet18")
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "3 key(s) that change what its checkpoints mean differ (old -> new)" in done.stderr
    for key, old, new in (
        ("data.global_batch_size", "32", "64"),
        ("model.name", '"resnet10t"', '"resnet18"'),
        ("optim.name", '"adaact"', '"sgd"'),
    ):
        assert re.search(rf"{re.escape(key)} +{re.escape(old)} -> {re.escape(new)}", done.stderr)
    assert f"--set run.output_dir={run_dir}-2" in done.stderr
    assert "Traceback" not in done.stderr and "Resumed" not in done.stderr
    assert (run_dir / "config.yaml").read_text() == config_before
    assert len(starts(run_dir)) == 1  # the refused start left no record
    assert checkpoints(run_dir) == ["step00000007", "step00000008"]


def test_extending_the_schedule_needs_an_explicit_allowance(run):
    run_dir, command = run
    refused = train(*command, "schedule.epochs=4")
    assert refused.returncode == EXIT_CONFIG
    assert "schedule.epochs  3 -> 4" in refused.stderr
    assert "--set checkpoint.allow_changes=[schedule.epochs]" in refused.stderr
    done = train(*command, "schedule.epochs=4", "checkpoint.allow_changes=[schedule.epochs]")
    assert done.returncode == 0, done.stderr
    assert "Resumed from" in done.stderr and "schedule.epochs 3 -> 4" in done.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == 40
    record = starts(run_dir)
    assert [line["changed"] for line in record] == [{}, {"schedule.epochs": [3, 4]}]
    assert record[1]["world_size"] == 1 and "schedule.epochs=4" in record[1]["command"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["schedule"]["epochs"] == 3


def test_free_keys_change_freely_and_each_start_is_recorded(run):
    run_dir, command = run
    done = train(*command, "logging.every_steps=2", "eval.every_epochs=2", "data.num_workers=1")
    assert done.returncode == 0, done.stderr
    record = starts(run_dir)
    assert len(record) == 2 and record[1]["changed"] == {}
    assert record[1]["overrides"]["logging.every_steps"] == "--set logging.every_steps=2"
    assert record[1]["config"]["eval"]["every_epochs"] == 2


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(run):
    run_dir, command = run
    newest = run_dir / "checkpoints" / "step00000008"
    model_file = newest / "mp_rank_00_model_states.pt"
    model_file.write_bytes(model_file.read_bytes()[:1000])  # a full disk, a bad copy
    done = train(*command)
    assert done.returncode == 0, done.stderr
    assert f"Skipping damaged checkpoint {newest}" in done.stderr
    assert "mp_rank_00_model_states.pt has 1000 bytes" in done.stderr
    assert f"Resumed from {run_dir / 'checkpoints' / 'step00000007'}: step 7" in done.stderr
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 30
    assert model_file.stat().st_size == 1000  # left where it was, as it was, never pruned
    record = (run_dir / "checkpoints" / "damaged.jsonl").read_text()
    assert '"tag": "step00000008"' in record and "1000 bytes" in record
    again = train(*command)  # the next start does not try it again
    assert again.returncode == 0 and "Skipping damaged" not in again.stderr


def test_a_named_damaged_checkpoint_is_an_error_naming_the_file(run):
    run_dir, command = run
    named = run_dir / "checkpoints" / "step00000007"
    (named / "rng" / "rank00000.pt").unlink()  # a rank's file lost
    done = train(*command, f"checkpoint.resume={named}")
    assert done.returncode == EXIT_CONFIG
    assert f"checkpoint.resume='{named}'" in done.stderr
    assert "rng/rank00000.pt is missing" in done.stderr and "Traceback" not in done.stderr


def test_a_checkpoint_of_another_run_is_refused(run, tmp_path):
    run_dir, command = run
    other = write_config(
        tmp_path / "other.yaml",
        TINY,
        run={"output_dir": str(tmp_path / "other")},
        optim={"name": "sgd", "lr": 0.05},
    )
    resume = f"checkpoint.resume={run_dir / 'checkpoints' / 'step00000008'}"
    done = train("--config", str(other), "--set", resume)
    assert done.returncode == EXIT_CONFIG
    assert "belongs to a run with another config" in done.stderr
    assert "optim.name 'adaact' -> 'sgd'" in done.stderr


@pytest.mark.parametrize(
    "config, overrides, expected",
    [
        (
            "a2_resnet50",
            ["data.root=/no/such/dir", "distributed.device=cpu"],
            "Invalid data.root='/no/such/dir' in --set data.root=/no/such/dir: must be a shard "
            "directory holding train/manifest.json; it does not exist: write the shards with: "
            "python launch/make_shards.py --src IMAGE_FOLDER --out /no/such/dir --split train",
        ),
        (
            "demo",
            ["data.backend=dali"],
            "Invalid data.num_workers=0 in ",  # demo.yaml sets 0 workers: DALI needs threads
        ),
    ],
)
def test_bad_data_settings_are_one_line_config_errors(tmp_path, config, overrides, expected):
    done = train("--config", config, "--set", f"run.output_dir={tmp_path / 'run'}", *overrides)
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert expected in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("config error")]
    assert len(errors) == 1 and "Traceback" not in done.stderr


def test_a_data_root_without_the_split_says_how_to_write_it(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = train(
        "--config", "a2_resnet50", "--set", f"run.output_dir={tmp_path / 'run'}",
        f"data.root={empty}", "distributed.device=cpu",
    )  # fmt: skip
    assert done.returncode == EXIT_CONFIG
    assert "it has no train/ split: write the shards with: python launch/make_shards.py" in (
        done.stderr
    )
    assert f"--out {empty} --split train" in done.stderr


def test_a_key_added_by_a_later_version_at_its_default_is_no_change():
    """Records written before a key existed must stay resumable after an upgrade, unless
    the new key is set to something other than the earlier behaviour."""
    from adaact_dist.train.run_record import guarded_differences

    old = {"run": {"seed": 1}, "schedule": {"epochs": 3}}
    new = {"run": {"seed": 1, "target_top1": None}, "schedule": {"epochs": 3, "max_steps": None}}
    assert guarded_differences(old, new) == {}
    new["schedule"]["max_steps"] = 10
    assert list(guarded_differences(old, new)) == ["schedule.max_steps"]
    assert list(guarded_differences(new, old)) == ["run.target_top1", "schedule.max_steps"]
