"""The critical-batch study: how grids grow and runs are cut, and one tiny study end to end
(real trainer runs) whose second invocation trains nothing."""

from __future__ import annotations

import csv
import json
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from adaact_dist.study import critical_cli
from adaact_dist.study.critical_batch import (
    BUDGET_FACTOR,
    INITIAL_GRID,
    MAX_EXTENSIONS,
    Cell,
    CriticalRun,
    Outcome,
    best_lr,
    next_lr,
    step_budget,
)
from adaact_dist.study.critical_records import pack_records
from adaact_dist.study.critical_results import (
    CRITICAL_FIELDS,
    NOISE_FIELDS,
    STEPS_FIELDS,
    best_points,
)

CELL = Cell("digits", "adaact", 64, center=0.4)


def _outcome(lr: float, seed: int, steps: int | None, top1: float = 90.0) -> Outcome:
    run = CriticalRun(
        task="digits", optimizer="adaact", batch_size=64, lr=lr, seed=seed, target=95.0,
        max_steps=3000, weight_decay=0.0, run_dir=Path("/nowhere"),
    )  # fmt: skip
    return Outcome(run, steps, top1)


def _grow(steps_of) -> list[float]:
    """Every lr the cell tries when lr -> steps (one seed) is ``steps_of``."""
    tried, outcomes = [], []
    while (lr := next_lr(CELL, tried, outcomes)) is not None:
        outcomes.append(_outcome(lr, 0, steps_of(lr)))
        tried.append(lr)
    return tried


def test_the_grid_starts_at_the_rule_and_grows_towards_its_best_edge():
    assert _grow(lambda lr: 100) == [0.4, 0.2, 0.8]  # a tie: the smallest lr wins, inside
    assert _grow(lambda lr: round(100 / lr)) == [0.4, 0.2, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6]
    assert len(_grow(lambda lr: round(100 / lr))) == len(INITIAL_GRID) + MAX_EXTENSIONS
    # The best inside the grown grid: it stops there.
    assert _grow(lambda lr: {0.4: 300, 0.2: 400, 0.8: 200, 1.6: 150, 3.2: 170}.get(lr)) == [
        0.4, 0.2, 0.8, 1.6, 3.2,
    ]  # fmt: skip


def test_reaching_the_target_with_more_seeds_beats_fewer_steps():
    outcomes = [
        _outcome(0.2, 0, 500), _outcome(0.2, 1, 520),
        _outcome(0.4, 0, 100), _outcome(0.4, 1, None),
        _outcome(0.8, 0, None, top1=93.0), _outcome(0.8, 1, None, top1=94.0),
    ]  # fmt: skip
    assert best_lr(outcomes) == 0.2
    # No lr reached it: the best top-1 decides, so the grid grows towards it.
    assert best_lr([_outcome(0.2, 0, None, 60.0), _outcome(0.4, 0, None, 80.0)]) == 0.4


def test_a_run_is_cut_where_it_can_no_longer_be_its_cells_best():
    outcomes = [_outcome(0.4, 0, 120), _outcome(0.4, 1, 90), _outcome(0.2, 0, 100)]
    assert step_budget(3000, 0, outcomes) == BUDGET_FACTOR * 100
    assert step_budget(3000, 1, outcomes) == BUDGET_FACTOR * 90
    assert step_budget(3000, 2, outcomes) == 3000  # nothing reached yet with that seed
    assert step_budget(150, 0, outcomes) == 150
    assert step_budget(3000, 0, [_outcome(0.4, 0, 2)], least=11) == 11  # past the warm-up


def test_a_best_lr_on_the_edge_of_what_its_cell_tried_is_flagged():
    inside = [_outcome(0.2, 0, 300), _outcome(0.4, 0, 200), _outcome(0.8, 0, 250)]
    (point,) = best_points(inside, "adaact")
    assert (point.lr, point.steps, point.at_edge) == (0.4, [200], False)
    (point,) = best_points([*inside, _outcome(0.1, 0, 150)], "adaact")
    assert (point.lr, point.at_edge) == (0.1, True)
    (point,) = best_points([_outcome(0.4, 0, 200)], "adaact")  # one lr: no edge to speak of
    assert not point.at_edge


def test_fixed_lrs_are_tried_in_order_and_never_grown():
    fixed = Cell("digits", "sgd", 32, center=0.1, fixed_lrs=(0.05, 0.2))
    assert next_lr(fixed, [], []) == 0.05
    assert next_lr(fixed, [0.05], [_outcome(0.05, 0, 10)]) == 0.2
    assert next_lr(fixed, [0.05, 0.2], [_outcome(0.05, 0, 10), _outcome(0.2, 0, None)]) is None


def test_an_extra_lr_joins_the_grid_after_its_initial_values():
    card = Cell("digits", "adaact", 64, center=0.4, extra_lrs=(0.25,))

    def grow(steps: dict[float, int]) -> list[float]:
        tried, outcomes = [], []
        while (lr := next_lr(card, tried, outcomes)) is not None:
            outcomes.append(_outcome(lr, 0, steps[lr]))
            tried.append(lr)
        return tried

    # the extra lr is best and inside what was tried: the grid is complete
    assert grow({0.4: 300, 0.2: 250, 0.8: 400, 0.25: 200}) == [0.4, 0.2, 0.8, 0.25]
    # 0.2 is best and the lowest tried: the grid grows below it, as without the extra
    assert grow({0.4: 300, 0.2: 250, 0.8: 400, 0.25: 500, 0.1: 260}) == [
        0.4, 0.2, 0.8, 0.25, 0.1,
    ]  # fmt: skip
    # an extra below the grid that is best: the next grid value below it
    low = Cell("digits", "adaact", 64, center=0.4, extra_lrs=(0.15,))
    assert next_lr(low, [0.4, 0.2, 0.8, 0.15], [_outcome(0.15, 0, 10)]) == 0.1


def test_more_seeds_from_a_batch_size_up(tmp_path):
    plan = critical_cli.plan_of(
        critical_cli.build_parser().parse_args(
            ["--optimizers", "adaact", "--batch-sizes", "128,256,2048", "--seeds", "2,3@256",
             "--extra-lr", "adaact@2048=4", "--extra-lr", "adaact@2048=8", "--out", str(tmp_path)]
        )
    )  # fmt: skip
    cells = {cell.batch_size: cell for cell in plan.cells()}
    assert [cells[b].seeds for b in (128, 256, 2048)] == [2, 3, 3]
    assert cells[2048].extra_lrs == (4.0, 8.0) and cells[128].extra_lrs == ()
    assert plan.seeds.describe() == "2 seed(s), 3 from batch 256 up"


def test_records_leave_out_runs_that_have_not_ended(tmp_path):
    unfinished = tmp_path / "runs" / "digits" / "adaact" / "b64" / "lr0.4-s0"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text("run: {}\n")
    (unfinished / "eval.csv").write_text("step\n")
    archive = tmp_path / "records.tar.gz"
    assert pack_records(tmp_path, archive) == 0
    with tarfile.open(archive) as tar:
        assert tar.getnames() == []


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def test_a_tiny_study_end_to_end_then_nothing_to_do(tmp_path, capsys):
    out = tmp_path / "study"
    argv = [
        "--task", "digits", "--optimizers", "adaact,sgd", "--batch-sizes", "32,128",
        "--lrs", "0.05,0.2", "--target", "40", "--seeds", "1", "--max-steps", "60",
        "--noise-batch", "128", "--noise-micro-batch", "64", "--jobs", "2", "--out", str(out),
        "--set", f"data.root={tmp_path / 'data'}", "eval.geometric_spacing=0.2",
    ]  # fmt: skip
    assert critical_cli.main(argv) == 0
    first = capsys.readouterr().out
    assert "8 grid run(s) and 2 noise run(s) final, 10 trained now" in first

    columns, steps = _rows(out / "steps_to_target.csv")
    assert columns == list(STEPS_FIELDS) and len(steps) == 8
    for row in steps:
        summary = json.loads(
            (
                out / "runs" / "digits" / row["optimizer"] / f"b{row['batch_size']}"
                / f"lr{float(row['lr']):.4g}-s0" / "summary.json"
            ).read_text()
        )  # fmt: skip
        if row["steps_to_target"]:
            assert summary["stop_reason"] == "target_reached"
            assert int(row["steps_to_target"]) == summary["steps"] == summary["target_steps"]
            assert int(row["examples_to_target"]) == summary["steps"] * int(row["batch_size"])
        else:
            assert summary["stop_reason"] in ("completed", "diverged")
            assert row["examples_to_target"] == ""
    columns, fits = _rows(out / "critical_batch.csv")
    assert columns == list(CRITICAL_FIELDS)
    assert [row["optimizer"] for row in fits] == ["adaact", "sgd"]
    for row in fits:  # two batch sizes that both reached 40%: a fit through both points
        assert float(row["s_min"]) > 0 and float(row["b_noise"]) >= 0
        assert row["batch_sizes_fitted"] == "32 128"
    columns, noise = _rows(out / "noise_scale.csv")
    assert columns == list(NOISE_FIELDS)
    assert {(r["optimizer"], r["batch_size"], r["micro_batch_size"]) for r in noise} == {
        ("adaact", "128", "64"), ("sgd", "128", "64"),
    }  # fmt: skip
    for name in ("steps_to_target.png", "best_lr.png", "noise_scale.png"):
        assert (out / name).stat().st_size > 10_000, name
    assert "Fit of S(B)" in (out / "summary.md").read_text()

    archive = tmp_path / "records.tar.gz"
    assert critical_cli.main([*argv, "--pack-records", str(archive)]) == 0
    assert "8 grid run(s) and 2 noise run(s) final, 0 trained now" in capsys.readouterr().out
    # The records alone rewrite every table: unpacked elsewhere, --report-only.
    again = tmp_path / "again"
    with tarfile.open(archive) as tar:
        assert not [m.name for m in tar.getmembers() if "checkpoints" in m.name]
        tar.extractall(again, filter="data")
    report = [*argv[: argv.index("--out")], "--out", str(again), "--report-only"]
    assert critical_cli.main(report) == 0
    for table in ("steps_to_target.csv", "critical_batch.csv", "noise_scale.csv"):
        assert (again / table).read_bytes() == (out / table).read_bytes(), table
    assert len(_rows(again / "noise_scale.csv")[1]) == len(noise) > 0
    # The cost of the whole study, from the runs' own records, whatever trained them.
    summaries = sorted(out.rglob("summary.json"))
    hours = sum(json.loads(path.read_text())["wall_time_s"] for path in summaries) / 3600
    assert len(summaries) == 10
    assert (
        f"All invocations: 10 run(s) ended, {hours:.1f} h of run time in all"
        in (out / "summary.md").read_text()
    )


class _Trainer:
    """Stands in for the trainer process to watch the study's scheduling. Every run reaches
    the target in 100 steps; each waits until ``jobs`` runs train together (runs that may go
    side by side must), then a moment more for one run too many to start (none may)."""

    def __init__(self, jobs: int):
        self.jobs = jobs
        self.together = threading.Barrier(jobs, timeout=60)
        self.changed = threading.Condition()
        self.active = self.most = 0
        self.finished: set[Path] = set()

    def run_one(self, run, config, common, threads):
        with self.changed:
            self.active += 1
            self.most = max(self.most, self.active)
            self.changed.notify_all()
        self.together.wait()
        with self.changed:
            self.changed.wait_for(lambda: self.active > self.jobs, timeout=0.5)
            self.active -= 1
            self.finished.add(run.run_dir)
        return SimpleNamespace(returncode=0, seconds=0.0)

    def read_outcome(self, run):
        return Outcome(run, 100, 96.0) if run.run_dir in self.finished else None


@pytest.mark.parametrize("optimizers", ["adaact", "adaact,sgd"])
def test_jobs_runs_train_side_by_side_and_never_more(optimizers, tmp_path, monkeypatch):
    """--jobs 2 trains an lr's two seeds together (a study's last cell too), and the cells
    beside each other share the same two slots."""
    trainer = _Trainer(jobs=2)
    monkeypatch.setattr(critical_cli, "run_one", trainer.run_one)
    monkeypatch.setattr(critical_cli, "read_outcome", trainer.read_outcome)
    args = critical_cli.build_parser().parse_args(
        ["--optimizers", optimizers, "--batch-sizes", "32", "--lrs", "0.05,0.2", "--seeds", "2",
         "--jobs", "2", "--out", str(tmp_path)]
    )  # fmt: skip
    study = critical_cli.Study(args, critical_cli.plan_of(args), [])
    outcomes, failures = study.all_cells()
    cells = len(args.optimizers)
    assert not failures and len(outcomes) == len(trainer.finished) == 4 * cells
    assert len(study.trained) == 4 * cells and trainer.most == 2


def test_report_only_trains_nothing_and_says_what_is_missing(tmp_path, capsys):
    argv = ["--report-only", "--optimizers", "adaact", "--batch-sizes", "16,32"]
    assert critical_cli.main([*argv, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0 grid run(s) and 0 noise run(s) final, 0 trained now" in out
    assert "not finished yet (left out): adaact b16, adaact b32" in out
    summary = (tmp_path / "summary.md").read_text()
    assert "**Partial**" in summary and not list(tmp_path.rglob("summary.json"))
    assert (tmp_path / "steps_to_target.csv").read_text().startswith("task,optimizer,")


def test_keys_the_study_sets_are_refused_from_set(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--set", "optim.lr=0.1"]
    assert critical_cli.main(argv) == critical_cli.EXIT_CONFIG
    assert "optim.lr is set by the study" in capsys.readouterr().err
    argv = ["--out", str(tmp_path), "--noise-batch", "64", "--noise-micro-batch", "64"]
    assert critical_cli.main(argv) == critical_cli.EXIT_CONFIG
    assert "must be below --noise-batch" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad",
    [
        ["--lrs", "0.1,x"],
        ["--target", "120"],
        ["--seeds", "0"],
        ["--seeds", "2,0@256"],
        ["--extra-lr", "adam@2048=4"],
        ["--extra-lr", "adaact@2048=-1"],
    ],
)
def test_bad_arguments_are_named(bad, capsys):
    with pytest.raises(SystemExit):
        critical_cli.build_parser().parse_args(bad)
    assert bad[0] in capsys.readouterr().err
