"""Command line of ``launch/critical_batch.py``: parse, run every cell's lr grid, then the
noise runs, then write the tables, plots and summary."""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from adaact_dist.data.demo_data import BUILTIN_TASKS
from adaact_dist.study import critical_figures
from adaact_dist.study.cli import _batch_sizes, _names, _positive
from adaact_dist.study.critical_batch import (
    STUDY_KEYS,
    Cell,
    CriticalRun,
    Outcome,
    Plan,
    SeedRule,
    best_lr,
    next_lr,
    read_outcome,
    step_budget,
)
from adaact_dist.study.critical_records import pack_records
from adaact_dist.study.critical_report import StudyContext, summary_markdown
from adaact_dist.study.critical_results import (
    best_points,
    critical_batch,
    read_noise_rows,
    write_critical,
    write_noise,
    write_steps,
)
from adaact_dist.study.runner import FINAL_STATES, check_specs, last_log_line, run_one, run_state
from adaact_dist.train.cli import add_override_option, overrides_of
from adaact_dist.train.config_io import ConfigError, load_config, parse_override
from adaact_dist.train.optimizers import OPTIMIZERS
from adaact_dist.train.run_summary import RunSummary

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
NOISE_OPTIMIZERS = ("adaact", "sgd")


class RunFailed(RuntimeError):
    """A trainer run ended without a result (a crash, not a divergence)."""


class NotRun(RuntimeError):
    """``--report-only``: a run the plan needs has not finished yet."""


def _lrs(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of lrs > 0")
    return values


def _seed_rule(text: str) -> SeedRule:
    match = re.fullmatch(r"(\d+)(?:,(\d+)@(\d+))?", text)
    if match is None or int(match[1]) < 1 or (match[2] is not None and int(match[2]) < 1):
        raise argparse.ArgumentTypeError(
            f"{text!r}: N seeds per lr, or N,M@B for M seeds from batch B up (N, M >= 1)"
        )
    if match[2] is None:
        return SeedRule(int(match[1]))
    return SeedRule(int(match[1]), int(match[2]), int(match[3]))


def _extra_lr(text: str) -> tuple[str, int, float]:
    match = re.fullmatch(r"([\w-]+)@(\d+)=([0-9.eE+-]+)", text)
    try:
        lr = float(match[3]) if match else -1.0
    except ValueError:
        lr = -1.0
    if match is None or match[1] not in OPTIMIZERS or lr <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: OPTIMIZER@BATCH=LR with an optimizer of {', '.join(OPTIMIZERS)} and "
            "an lr > 0"
        )
    return match[1], int(match[2]), lr


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 100.0:
        raise argparse.ArgumentTypeError(f"{text!r}: a validation top-1 in (0, 100]")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Steps to a validation target against batch size, the lr tuned at every "
        "batch size (Shallue et al. 2019), and the gradient noise scale (McCandlish et al. "
        "2018); finished runs are skipped, so the same command continues a study.",
    )
    parser.add_argument("--config", default="critical_batch", help="trainer recipe of every run")
    parser.add_argument(
        "--task",
        choices=list(BUILTIN_TASKS),
        default="digits_deformed",
        help="embedded data set (data.builtin)",
    )
    parser.add_argument(
        "--optimizers",
        type=_names(list(OPTIMIZERS)),
        default=list(OPTIMIZERS),
        help="comma-separated",
    )
    parser.add_argument(
        "--batch-sizes",
        type=_batch_sizes,
        default=[16, 32, 64, 128, 256, 512, 1024],
        help="global batch sizes",
    )
    parser.add_argument("--target", type=_percent, default=95.0, help="validation top-1 (%%)")
    parser.add_argument(
        "--seeds",
        type=_seed_rule,
        default=SeedRule(2),
        help="seeds 0..N-1 per lr; N,M@B: M seeds from batch B up",
    )
    parser.add_argument("--max-steps", type=_positive, default=3000, help="step budget per run")
    parser.add_argument(
        "--lrs",
        type=_lrs,
        default=None,
        help="fixed lrs for every optimizer and batch size instead of the grown grids",
    )
    parser.add_argument(
        "--extra-lr",
        type=_extra_lr,
        action="append",
        default=[],
        metavar="OPTIMIZER@BATCH=LR",
        help="an lr that this cell's grid tries besides its own (repeatable), e.g. adaact@2048=4",
    )
    parser.add_argument(
        "--noise-batch",
        type=_positive,
        default=256,
        help="batch size of the gradient-noise runs (adaact and sgd, at that cell's best lr)",
    )
    parser.add_argument(
        "--noise-micro-batch", type=_positive, default=32, help="their micro-batch size"
    )
    parser.add_argument("--jobs", type=_positive, default=1, help="runs at a time")
    parser.add_argument("--threads", type=_positive, default=1, help="OpenMP threads per run")
    parser.add_argument("--out", type=Path, default=Path("runs/critical"), help="study folder")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write the tables and plots from the runs finished so far (each "
        "cell up to its first unfinished run), e.g. while the study runs elsewhere",
    )
    parser.add_argument(
        "--pack-records",
        type=Path,
        metavar="ARCHIVE",
        help="also write the ended runs' records (what the tables and plots are made from; "
        "no checkpoints) to this .tar.gz; unpacked into --out, --report-only rewrites them",
    )
    add_override_option(
        parser, "trainer overrides for every run (not the keys the study sets per run)"
    )
    return parser


class Study:
    """Runs every cell's lr grid, printing progress, at most ``jobs`` trainer runs at a time:
    the seeds of one lr side by side and the cells beside each other, so that no free slot
    waits for another cell's grid (the tail of a study is one cell)."""

    def __init__(self, args: argparse.Namespace, plan: Plan, common: list[str]):
        self.args, self.plan, self.common = args, plan, common
        self.slots = threading.BoundedSemaphore(args.jobs)
        """One per trainer run that may train at a time."""
        schedule = load_config(args.config, common).schedule
        self.least_steps = (schedule.warmup_steps or 0) + 1  # a budget must outlast warm-up
        self.trained: list[str] = []
        """Runs trained (or resumed) by this invocation; appended to from several threads."""
        self.incomplete: list[str] = []
        """Cells whose grid ``--report-only`` found unfinished."""
        self.unsettled: set[str] = set()
        """Cells whose best lr is not final (unfinished or failed): no noise run there."""
        self.started = time.perf_counter()

    def execute(self, run: CriticalRun) -> Outcome:
        """The run's outcome: read back if final, else trained (or resumed) now."""
        check_specs([run], self.args.config, self.common)
        outcome = read_outcome(run)
        if outcome is not None:
            return outcome
        if self.args.report_only:
            raise NotRun(run.name)
        with self.slots:
            result = run_one(run, self.args.config, self.common, self.args.threads)
        self.trained.append(run.name)
        outcome = read_outcome(run)
        minutes = (time.perf_counter() - self.started) / 60
        if outcome is None:
            print(
                f"[{minutes:6.1f} min] {run.name}: FAILED (exit {result.returncode}): "
                f"{last_log_line(run.run_dir)}; log {run.run_dir / 'train.log'}",
                flush=True,
            )
            raise RunFailed(run.name)
        reached = "not reached" if outcome.steps is None else f"{outcome.steps} steps"
        print(
            f"[{minutes:6.1f} min] {run.name} (budget {run.max_steps}): {reached} "
            f"in {result.seconds:.0f} s",
            flush=True,
        )
        return outcome

    def grid_run(self, cell: Cell, lr: float, seed: int, outcomes: list[Outcome]) -> CriticalRun:
        """The run of ``seed`` at ``lr``, cut where the cell's earlier runs of that seed say."""
        budget = step_budget(self.plan.max_steps, seed, outcomes, self.least_steps)
        return self.plan.run(cell, lr, seed, budget)

    def cell(self, cell: Cell) -> tuple[list[Outcome], bool]:
        """Every run of one cell, in the grid's order, and whether its grid is complete (with
        ``--report-only``, the runs of those of its lrs whose seeds have all finished)."""
        tried: list[float] = []
        outcomes: list[Outcome] = []
        with ThreadPoolExecutor(max_workers=cell.seeds) as seeds:
            while (lr := next_lr(cell, tried, outcomes)) is not None:
                futures = [
                    seeds.submit(self.execute, self.grid_run(cell, lr, seed, outcomes))
                    for seed in range(cell.seeds)
                ]
                try:
                    outcomes += [future.result() for future in futures]
                except NotRun:
                    return outcomes, False
                tried.append(lr)
        return outcomes, True

    def all_cells(self) -> tuple[list[Outcome], list[str]]:
        """Every cell, the cells training side by side but reported in the plan's order; a
        cell whose run failed stops there and is reported, the rest go on."""
        outcomes, failures = [], []
        cells = self.plan.cells()
        with ThreadPoolExecutor(max_workers=max(1, len(cells))) as pool:
            futures = {pool.submit(self.cell, cell): cell for cell in cells}
            for future, cell in futures.items():
                name = f"{cell.optimizer} b{cell.batch_size}"
                try:
                    runs, complete = future.result()
                except RunFailed as error:
                    failures.append(f"{name}: {error}")
                    self.unsettled.add(name)
                    continue
                outcomes += runs
                if not complete:
                    self.incomplete.append(name)
                    self.unsettled.add(name)
        return outcomes, failures

    def noise_runs(self, outcomes: list[Outcome]) -> tuple[list[CriticalRun], list[str]]:
        """AdaAct's and SGD's noise runs at the noise batch's best lr, in parallel (where that
        cell's grid is complete)."""
        args, runs = self.args, []
        for cell in self.plan.cells():
            if cell.batch_size != args.noise_batch or cell.optimizer not in NOISE_OPTIMIZERS:
                continue
            mine = [
                o
                for o in outcomes
                if (o.run.optimizer, o.run.batch_size) == (cell.optimizer, cell.batch_size)
            ]
            if mine and f"{cell.optimizer} b{cell.batch_size}" not in self.unsettled:
                runs.append(self.plan.noise_run(cell, best_lr(mine), args.noise_micro_batch))
        failures = []
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for run, future in [(run, pool.submit(self.execute, run)) for run in runs]:
                try:
                    future.result()
                except RunFailed as error:
                    failures.append(f"noise run {error}")
                except NotRun:
                    self.incomplete.append(f"noise run {run.name}")
        return runs, failures


def plan_of(args: argparse.Namespace) -> Plan:
    """The runs that the parsed command line asks for."""
    return Plan(
        out=args.out,
        task=args.task,
        optimizers=args.optimizers,
        batch_sizes=args.batch_sizes,
        seeds=args.seeds,
        target=args.target,
        max_steps=args.max_steps,
        lrs=args.lrs,
        extra_lrs=_extra_lrs_by_cell(args.extra_lr),
    )


def _extra_lrs_by_cell(items: list[tuple[str, int, float]]) -> dict[tuple[str, int], tuple]:
    cells: dict[tuple[str, int], tuple[float, ...]] = {}
    for name, batch, lr in items:
        cells[(name, batch)] = (*cells.get((name, batch), ()), lr)
    return cells


def _check_arguments(args: argparse.Namespace, common: list[str]) -> None:
    for item in common:
        key = parse_override(item)[0]
        if key in STUDY_KEYS:
            raise ConfigError(f"--set {item}: {key} is set by the study for each run")
    if args.noise_batch in args.batch_sizes and args.noise_batch % args.noise_micro_batch:
        raise ConfigError(
            f"--noise-micro-batch {args.noise_micro_batch} must divide --noise-batch "
            f"{args.noise_batch} (at least 2 micro-batches per step)"
        )
    if args.noise_micro_batch >= args.noise_batch:
        raise ConfigError(
            f"--noise-micro-batch {args.noise_micro_batch} must be below --noise-batch "
            f"{args.noise_batch}: the noise scale compares the two"
        )


def _ended_runs(outcomes: list[Outcome], noise: list[CriticalRun]) -> tuple[int, float]:
    """How many of the study's runs have ended, and their wall times summed."""
    runs = [o.run for o in outcomes] + noise
    ended = [RunSummary.read(r.run_dir) for r in runs if run_state(r.run_dir) in FINAL_STATES]
    return len(ended), sum(summary.wall_time_s for summary in ended)


def _write_reports(
    args: argparse.Namespace,
    outcomes: list[Outcome],
    noise: list[CriticalRun],
    context: StudyContext,
) -> list[Path]:
    out = args.out
    names = [n for n in args.optimizers if any(o.run.optimizer == n for o in outcomes)]
    points = {name: best_points(outcomes, name) for name in names}
    fits = {name: critical_batch(args.task, name, points[name]) for name in names}
    noise_rows = [row for run in noise for row in read_noise_rows(run)]
    pngs = []
    if points:  # nothing has finished yet: tables with headers only, no plots
        pngs += [
            critical_figures.plot_steps_to_target(points, fits, args.target, out),
            critical_figures.plot_best_lr(points, out),
        ]
    noise_png = critical_figures.plot_noise_scale(noise_rows, fits, out)
    if noise_png is not None:
        pngs.append(noise_png)
    written = [
        write_steps(outcomes, out / "steps_to_target.csv"),
        write_critical(list(fits.values()), out / "critical_batch.csv"),
        write_noise(noise_rows, out / "noise_scale.csv"),
        *pngs,
    ]
    summary = out / "summary.md"
    summary.write_text(
        summary_markdown(context, points, list(fits.values()), noise_rows, [p.name for p in pngs])
    )
    return [*written, summary]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common = overrides_of(args)
    try:
        _check_arguments(args, common)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        study = Study(args, plan_of(args), common)
        outcomes, failures = study.all_cells()
        noise, noise_failures = study.noise_runs(outcomes)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    ended, ended_wall_s = _ended_runs(outcomes, noise)
    context = StudyContext(
        command=shlex.join(
            ["python", "launch/critical_batch.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        config=args.config,
        task=args.task,
        target=args.target,
        max_steps=args.max_steps,
        seeds=args.seeds,
        jobs=args.jobs,
        threads=args.threads,
        runs=len(study.trained),
        wall_s=time.perf_counter() - study.started,
        unfinished=tuple(study.incomplete),
        final_runs=ended,
        final_runs_wall_s=ended_wall_s,
    )
    for path in _write_reports(args, outcomes, noise, context):
        print(f"wrote {path}")
    if args.pack_records is not None:
        count = pack_records(args.out, args.pack_records)
        print(f"wrote {args.pack_records} ({count} record files)")
    failures += noise_failures
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    if study.incomplete:
        print(f"not finished yet (left out): {', '.join(study.incomplete)}")
    noise_final = sum(read_outcome(run) is not None for run in noise)
    print(
        f"{len(outcomes)} grid run(s) and {noise_final} noise run(s) final, {len(study.trained)} "
        f"trained now, in {context.wall_s / 60:.1f} min"
    )
    return EXIT_FAILED if failures else EXIT_OK
