"""The optimizer study end to end at a tiny size: runs, CSV, summary, plots, skipping, sweep."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import pytest
import yaml
from PIL import Image

from adaact_dist.study import recipes
from adaact_dist.study.cli import main
from adaact_dist.study.results import RESULT_FIELDS
from adaact_dist.train import optimizers
from tests.train.helpers import PYTHON, ROOT, env, read_csv

# 8 px digits, one epoch of 5 steps at batch 256: a few seconds per run.
TINY = ["--tasks", "digits", "--batch-sizes", "256", "--seeds", "1", "--jobs", "2"]
OPTIMIZERS = ["adaact", "lars"]


def _tiny_set(tmp_path) -> list[str]:
    return ["--set", "schedule.epochs=1", "data.image_size=8", f"data.root={tmp_path / 'data'}"]


def _files(folder):
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    args = [*TINY, "--optimizers", ",".join(OPTIMIZERS), "--out", str(tmp / "out")]
    args += _tiny_set(tmp)
    done = subprocess.run(
        [PYTHON, "launch/compare_optimizers.py", *args],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp, args, done.stdout


def test_every_run_is_a_finished_single_process_stage0_run(study):
    tmp, _, output = study
    for name in OPTIMIZERS:
        run = tmp / "out" / "runs" / "digits" / f"{name}-b256-s0"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["finished"] and summary["world_size"] == 1
        assert summary["optimizer"] == name and summary["plan"]["lr"] == pytest.approx(
            optimizers.OPTIMIZERS[name].lr(256)
        )
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["distributed"]["zero_stage"] == 0
        assert config["schedule"]["warmup_epochs"] == 0.25  # a quarter of the one epoch
        assert read_csv(run / "activations.csv")
        assert f"digits/{name}-b256-s0 (lr " in output
    assert "2 of 2 runs final (2 run now)" in output


def test_results_summary_and_plots_are_well_formed(study):
    tmp, _, _ = study
    out = tmp / "out"
    rows = read_csv(out / "results.csv")
    assert [r["optimizer"] for r in rows] == OPTIMIZERS
    assert tuple(rows[0]) == RESULT_FIELDS
    for row in rows:
        assert row["status"] == "finished" and row["batch_size"] == "256"
        assert 0.0 <= float(row["final_top1"]) <= float(row["best_top1"]) <= 100.0
        assert float(row["final_train_loss"]) > 0 and float(row["images_per_s"]) > 0
        assert float(row["seconds_per_epoch"]) > 0 and float(row["activation_variance"]) > 0
    summary = (out / "summary.md").read_text()
    assert "## digits: final validation top-1 (%), mean ± std over 1 seeds" in summary
    for name, recipe in optimizers.OPTIMIZERS.items():  # the lr rule of every optimizer
        assert (
            f"| {name} | {recipe.base_lr:g} | {recipe.scaling} | {recipe.lr(256):.3g} |" in summary
        )
    pngs = ["top1_vs_batch.png", "top1_vs_epoch_digits.png", "activation_variance_digits.png"]
    for name in pngs:
        assert f"![{name}]({name})" in summary
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 200


def test_second_invocation_skips_finished_runs_and_changes_no_run(study, capsys):
    tmp, args, _ = study
    before = _files(tmp / "out" / "runs")
    assert main(args) == 0
    output = capsys.readouterr().out
    for name in OPTIMIZERS:
        lr = optimizers.OPTIMIZERS[name].lr(256)
        assert f"skip digits/{name}-b256-s0 (lr {lr:.3g}): finished" in output
    assert "(0 run now)" in output
    assert _files(tmp / "out" / "runs") == before


def test_changed_recipe_and_study_keys_are_refused_before_any_work(study, capsys):
    tmp, args, _ = study
    before = _files(tmp / "out")
    assert main([*args, "schedule.epochs=2"]) == 2
    error = capsys.readouterr().err
    assert "adaact-b256-s0 holds a run started with another config" in error
    assert "schedule.epochs         1 -> 2" in error
    assert main([*args, "optim.lr=1.0"]) == 2
    assert "optim.lr is set by the study for each run" in capsys.readouterr().err
    assert _files(tmp / "out") == before


def test_sweep_writes_its_table_and_plot(study, capsys, monkeypatch):
    tmp, _, _ = study
    sgd = dataclasses.replace(optimizers.OPTIMIZERS["sgd"], sweep_lrs=(0.05,))
    monkeypatch.setitem(optimizers.OPTIMIZERS, "sgd", sgd)
    out = tmp / "sweep"
    assert main(["--sweep", *TINY, "--optimizers", "sgd", "--out", str(out), *_tiny_set(tmp)]) == 0
    rows = read_csv(out / "sweep.csv")
    # Linear scaling from batch 64 to 256; the sweep's own seeds.
    assert [(r["base_lr"], r["lr"], r["seed"]) for r in rows] == [("0.05", "0.2", "1000")]
    assert (out / "sweep-runs" / "digits" / "sgd-lr0.05-b256-s1000" / "summary.json").is_file()
    table = (out / "sweep.md").read_text()
    assert "| optimizer | best base lr (final top-1) | base lr in the optimizer table |" in table
    assert f"| sgd | 0.05 | {sgd.base_lr:g} |" in table
    assert (out / "sweep.png").stat().st_size > 10_000


def test_lr_scaling_and_warmup_rules():
    sgd, adamw = optimizers.OPTIMIZERS["sgd"], optimizers.OPTIMIZERS["adamw"]
    assert sgd.lr(1024) == pytest.approx(16 * sgd.base_lr)
    assert adamw.lr(1024) == pytest.approx(4 * adamw.base_lr)
    assert [recipes.warmup_epochs(b, 20) for b in (64, 256, 1024)] == [1, 2, 4]
    assert recipes.warmup_epochs(1024, 8) == 2  # at most a quarter of the run
