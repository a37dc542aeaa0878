"""Command line of ``launch/compare_optimizers.py``: parse, build the runs, run, report."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from adaact_dist.study import figures
from adaact_dist.study.recipes import STUDY_KEYS, RunSpec, study_specs, sweep_specs
from adaact_dist.study.report import Context, summary_markdown, sweep_markdown
from adaact_dist.study.results import aggregate, read_result, write_results
from adaact_dist.study.runner import FINAL_STATES, Outcome, check_specs, last_log_line, run_all
from adaact_dist.train.cli import add_override_option, overrides_of
from adaact_dist.train.config_io import ConfigError, load_config, parse_override
from adaact_dist.train.optimizers import OPTIMIZERS

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
TASKS = ("digits", "digits_noisy")
"""The study's tasks: the clean and the label-noise digits (see the README)."""
SWEEP_SEED_OFFSET = 1000
"""The sweep's seeds start here, so that no study run repeats a run the lr was chosen on."""


def _names(choices: list[str]):
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"{text!r}: a comma-separated list of {', '.join(choices)}"
            )
        return names

    return parse


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(n) for n in text.split(",")})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of integers >= 1")
    return sizes


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: an integer >= 1")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train one run per (task, optimizer, batch size, seed) and compare them; "
        "finished runs are skipped, interrupted ones resume.",
    )
    parser.add_argument(
        "--config", default="compare", help="the trainer recipe of every run (configs/ name)"
    )
    parser.add_argument(
        "--tasks",
        type=_names(list(TASKS)),
        default=list(TASKS),
        help="embedded data sets (data.builtin), comma-separated",
    )
    parser.add_argument(
        "--optimizers",
        type=_names(list(OPTIMIZERS)),
        default=list(OPTIMIZERS),
        help="optimizers, comma-separated",
    )
    parser.add_argument(
        "--batch-sizes", type=_batch_sizes, default=[64, 256, 1024], help="global batch sizes"
    )
    parser.add_argument("--seeds", type=_positive, default=3, help="seeds 0..N-1 per cell")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"), help="study folder")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="instead: every lr of each optimizer's grid at the smallest batch size "
        f"(seeds from {SWEEP_SEED_OFFSET}); writes sweep.csv, sweep.md, sweep.png",
    )
    parser.add_argument("--jobs", type=_positive, default=1, help="runs at a time")
    parser.add_argument(
        "--threads",
        type=_positive,
        default=1,
        help="OpenMP threads per run (1: small models gain little from more, and on a busy "
        "machine more threads spin against each other)",
    )
    add_override_option(
        parser,
        "trainer overrides for every run, e.g. --set schedule.epochs=5 (not the keys the "
        "study sets per run)",
    )
    return parser


def _specs(args: argparse.Namespace, epochs: int) -> list[RunSpec]:
    if args.sweep:
        seeds = [SWEEP_SEED_OFFSET + i for i in range(args.seeds)]
        return sweep_specs(
            args.out,
            tasks=args.tasks,
            optimizers=args.optimizers,
            batch_size=args.batch_sizes[0],
            seeds=seeds,
            epochs=epochs,
        )
    return study_specs(
        args.out,
        tasks=args.tasks,
        optimizers=args.optimizers,
        batch_sizes=args.batch_sizes,
        seeds=list(range(args.seeds)),
        epochs=epochs,
    )


def _report(done: int, total: int, outcome: Outcome) -> None:
    spec = outcome.spec
    where = f"{spec.task}/{spec.name} (lr {spec.lr:.3g})"
    if not outcome.ran:
        line = f"skip {where}: {outcome.state}"
    elif outcome.state in FINAL_STATES:
        line = f"{where}: {outcome.state} in {outcome.seconds:.0f} s"
    else:
        line = (
            f"{where}: FAILED (exit {outcome.returncode}): {last_log_line(spec.run_dir)}; "
            f"log {spec.run_dir / 'train.log'}"
        )
    print(f"[{done:>{len(str(total))}}/{total}] {line}", flush=True)


def _write_reports(args: argparse.Namespace, specs: list[RunSpec], context: Context) -> list[Path]:
    rows = [read_result(spec) for spec in specs]
    cells = aggregate(rows)
    out = args.out
    if args.sweep:
        written = [write_results(rows, out / "sweep.csv"), figures.plot_sweep(cells, out)]
        text = sweep_markdown(cells, context, [written[-1].name])
        markdown = out / "sweep.md"
    else:
        pngs = [figures.plot_top1_vs_batch(cells, out)]
        for task in args.tasks:
            pngs.append(figures.plot_top1_vs_epoch(specs, task, out))
            pngs.append(figures.plot_activation_variance(specs, task, out))
        written = [write_results(rows, out / "results.csv"), *pngs]
        text = summary_markdown(cells, context, [p.name for p in pngs])
        markdown = out / "summary.md"
    markdown.write_text(text)
    return [*written, markdown]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    common = overrides_of(args)
    started = time.perf_counter()
    try:
        for item in common:
            key = parse_override(item)[0]
            if key in STUDY_KEYS:
                raise ConfigError(f"--set {item}: {key} is set by the study for each run")
        # The recipe's own warm-up is replaced per run (it may not fit a shorter --set).
        base = load_config(args.config, [*common, "schedule.warmup_epochs=0"])
        specs = _specs(args, base.schedule.epochs)
        check_specs(specs, args.config, common)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    args.out.mkdir(parents=True, exist_ok=True)
    outcomes = run_all(
        specs, args.config, common, jobs=args.jobs, threads=args.threads, report=_report
    )
    context = Context(
        command=shlex.join(
            ["python", "launch/compare_optimizers.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        config=args.config,
        epochs=base.schedule.epochs,
        jobs=args.jobs,
        threads=args.threads,
    )
    for path in _write_reports(args, specs, context):
        print(f"wrote {path}")
    failed = [o for o in outcomes if o.state not in FINAL_STATES]
    print(
        f"{len(outcomes) - len(failed)} of {len(outcomes)} runs final "
        f"({sum(o.ran for o in outcomes)} run now) in {time.perf_counter() - started:.0f} s"
    )
    return EXIT_FAILED if failed else EXIT_OK
