"""Every GPU path of adaact-dist checked in one run, reported in ``gpu_check.md`` and ``.json``.

On one H100/H200-class GPU, from the repository root (the budgets add up to 7 minutes; the
report goes to ``benchmarks/``)::

    python -m benchmarks.gpu_check

Every part at a tiny size on the CPU, reported into DIR (what ``tests/benchmarks`` runs)::

    .venv/bin/python -m benchmarks.gpu_check --smoke --out DIR

``--only PART ...`` runs some parts again (the report then holds those); ``--timeout S`` bounds the
whole run (default 470 s); ``--work DIR`` keeps the parts' logs, runs and the photo set.
Each part runs in a child process of its own under its own time budget, so that a CUDA crash or
a hang in one cannot take the others down; it ends ok, failed (with the reason and the tail of
its log) or skipped (with the reason: no GPU, DeepSpeed/DALI/pytest not installed; a machine
with torch and timm alone runs the rest). The correctness parts run the test suite's CUDA tests
through pytest as they are (``tests/optim -k cuda``, ``tests/distributed/test_deepspeed.py -k
nccl``, ``tests/data/test_dali.py -k mixed_gpu_decoding``) and report each test's outcome.
The correctness parts and the demo share the GPU concurrently (their speed is not measured);
the timed parts run alone, one after the other, each comparing its variants in interleaved
rounds (``benchmarks/timing.py``). Goals are reported as measured against their targets, never
asserted. Without a CUDA GPU (and without ``--smoke``) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from adaact_dist._machine import cpu_name
from benchmarks.gpu_parts import (
    ROOT,
    Context,
    Outcome,
    Skipped,
    part_dali_test,
    part_deepspeed_nccl,
    part_demo,
    part_optim_tests,
    ratio,
)
from benchmarks.gpu_timing import (
    part_compile,
    part_loaders,
    part_optimizer_core,
    part_throughput,
)

MIN_START_S = 10.0  # a part that would get less than this is not started


@dataclass
class PartResult:
    """One part's record in the report."""

    name: str
    title: str
    status: str  # "ok", "failed" (a check failed, or it crashed or timed out) or "skipped"
    seconds: float
    budget_s: float
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error_tail: str = ""


# -- the parts, the goals, the runner and the report -----------------------------------------
@dataclass(frozen=True)
class Part:
    """A part of the check: what runs it, its time budget on the GPU, and whether it may share
    the GPU with the other concurrent parts (those whose speed is not measured)."""

    name: str
    title: str
    budget_s: float
    run: Callable[[Context], Outcome]
    concurrent: bool = False


PARTS = [
    Part("optim_tests", "1. optimizer-core tests on CUDA", 50, part_optim_tests, concurrent=True),
    Part("deepspeed_nccl", "1. DeepSpeed ZeRO over NCCL, fp32/bf16/fp16", 60,
         part_deepspeed_nccl, concurrent=True),
    Part("dali_test", "2. DALI 'mixed' decoding test", 40, part_dali_test, concurrent=True),
    Part("loaders", "2. loader images/s", 60, part_loaders),
    Part("throughput", "3. training images/s", 120, part_throughput),
    Part("optimizer_core", "4. statistics overhead and step()", 40, part_optimizer_core),
    Part("compile", "5. torch.compile with AdaAct's hooks", 150, part_compile),
    Part("demo", "6. the demo recipe on the GPU through DALI", 75, part_demo, concurrent=True),
]  # fmt: skip
PARTS_BY_NAME = {part.name: part for part in PARTS}


@dataclass(frozen=True)
class Goal:
    """A target for a figure of the run (a path into the parts' metrics, divided by another
    figure when ``per`` is given); reported as met or missed, never asserted."""

    text: str
    figure: tuple[str, ...]
    target: float
    per: tuple[str, ...] | None = None
    at_most: bool = False

    def measured(self, metrics: dict[str, Any]) -> float | None:
        value = _lookup(metrics, self.figure)
        return ratio(value, _lookup(metrics, self.per)) if self.per else value


def _lookup(metrics: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        metrics = metrics.get(key) if isinstance(metrics, dict) else None
    return metrics


GOALS = [
    *(
        goal
        for role, model in (("cnn", "ResNet-50"), ("vit", "ViT-S"))
        for goal in (
            Goal(
                f"AdaAct >= 0.97x SGD-momentum's images/s in the trainer, {model}",
                ("throughput", role, "trainer_adaact"),
                0.97,
                per=("throughput", role, "trainer_sgd"),
            ),
            Goal(
                f"the trainer >= 0.95x the plain loop's images/s (SGD-momentum), {model}",
                ("throughput", role, "trainer_sgd"),
                0.95,
                per=("throughput", role, "plain_sgd"),
            ),
            Goal(
                f"AdaAct's statistics <= 3% of forward+backward, {model}",
                ("optimizer_core", role, "stats_overhead"),
                0.03,
                at_most=True,
            ),
        )
    ),
    Goal("ResNet-50 bf16 >= 3,000 images/s (trainer, AdaAct)",
         ("throughput", "cnn", "trainer_adaact"), 3000),
    Goal("DALI's training pipeline >= the trainer's SGD-momentum images/s (ResNet-50)",
         ("loaders", "dali_train"), 1.0, per=("throughput", "cnn", "trainer_sgd")),
]  # fmt: skip


def evaluate_goals(results: list[PartResult], smoke: bool) -> list[dict[str, Any]]:
    metrics = {result.name: result.metrics for result in results}
    rows = []
    for goal in GOALS:
        value = goal.measured(metrics)
        if smoke:
            verdict = "n/a (--smoke: tiny sizes on the CPU, not a measurement)"
        elif value is None:
            verdict = "not measured (a part it needs did not run)"
        else:
            met = value <= goal.target if goal.at_most else value >= goal.target
            verdict = "met" if met else "missed"
        rows.append(
            {"goal": goal.text, "measured": value, "target": goal.target, "result": verdict}
        )
    return rows


def run_part(part: Part, ctx: Context) -> int:
    """In the child process: run one part and write its record for the parent."""
    record: dict[str, Any]
    try:
        outcome = part.run(ctx)
        status = "failed" if outcome.failures else "ok"
        record = {"status": status, "reason": "; ".join(outcome.failures), **asdict(outcome)}
    except Skipped as why:
        record = {"status": "skipped", "reason": str(why)}
    except Exception as error:  # the log has the traceback; the parent keeps its tail
        traceback.print_exc()
        record = {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
    record.pop("failures", None)
    result_path(ctx.work, part.name).write_text(json.dumps(record, default=str))
    return 0


def result_path(work: Path, name: str) -> Path:
    return work / "parts" / f"{name}.json"


class Child:
    """A part running in a child process of its own (its own process group, for the kill)."""

    def __init__(self, part: Part, args: argparse.Namespace, budget_s: float):
        self.part, self.work, self.budget_s = part, args.work, budget_s
        self.log = args.work / "logs" / f"{part.name}.log"
        result_path(self.work, part.name).unlink(missing_ok=True)
        command = [
            sys.executable,
            "-m",
            "benchmarks.gpu_check",
            "--part",
            part.name,
            "--work",
            str(self.work),
        ]
        self.started = time.monotonic()
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [*command, *(["--smoke"] if args.smoke else [])],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                # --smoke runs as many parts at a time as there are cores: one thread each
                env={**os.environ, "OMP_NUM_THREADS": "1"} if args.smoke else None,
                start_new_session=True,
            )

    def done(self) -> bool:
        return self.process.poll() is not None or time.monotonic() >= self.started + self.budget_s

    def result(self) -> PartResult:
        """Wait for the part until its budget is spent (then kill it and all it started)."""
        try:
            left = self.started + self.budget_s - time.monotonic()
            code = self.process.wait(timeout=max(0.0, left))
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            code = None
        seconds = time.monotonic() - self.started
        result = PartResult(self.part.name, self.part.title, "failed", seconds, self.budget_s)
        path = result_path(self.work, self.part.name)
        if code is None:
            result.reason = f"timed out after {seconds:.0f} s (budget {self.budget_s:.0f} s)"
        elif path.exists():
            for key, value in json.loads(path.read_text()).items():
                setattr(result, key, value)
        else:
            result.reason = f"its process exited with status {code} without a result"
        if result.status == "failed":
            result.error_tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
        return result


def run_parts(parts: list[Part], args: argparse.Namespace) -> list[PartResult]:
    """The concurrent parts together, then the timed ones one by one, each within its budget
    and the run's ``--timeout``. ``--smoke`` times nothing: there the parts run as many at a
    time as there are cores, each with three times its budget (small shared CPUs are slow)."""
    deadline = time.monotonic() + args.timeout
    results = {}

    def start(part: Part) -> Child | PartResult:
        budget = min(part.budget_s * (3 if args.smoke else 1), deadline - time.monotonic())
        if budget < MIN_START_S:
            why = f"the run's --timeout of {args.timeout:.0f} s was spent before it could start"
            return PartResult(part.name, part.title, "skipped", 0.0, part.budget_s, why)
        return Child(part, args, budget)

    def finish(started: Child | PartResult) -> None:
        result = started.result() if isinstance(started, Child) else started
        results[result.name] = result
        why = f": {result.reason}" if result.reason else ""
        print(f"[{result.seconds:6.1f} s] {result.name}: {result.status}{why}", flush=True)

    together = [part for part in parts if part.concurrent or args.smoke]
    queue, running = sorted(together, key=lambda part: -part.budget_s), []  # longest first
    at_once = (os.cpu_count() or 1) if args.smoke else len(queue)
    while queue or running:
        while queue and len(running) < at_once:
            running.append(start(queue.pop(0)))
        for started in [s for s in running if not isinstance(s, Child) or s.done()]:
            finish(started)
            running.remove(started)
        time.sleep(0.2)
    for part in parts:
        if part not in together:
            finish(start(part))
    return [results[part.name] for part in parts]


def machine_info(smoke: bool) -> dict[str, Any]:
    """The GPU, its driver, the CPU and the versions of everything the parts use."""
    dali = next(
        (d for d in importlib.metadata.distributions() if d.name.startswith("nvidia-dali")), None
    )
    libraries = {name: package_version(name) for name in ("timm", "deepspeed", "webdataset")}
    info: dict[str, Any] = {
        "mode": "smoke (CPU, tiny sizes)" if smoke else "GPU",
        "gpu": None,
        "gpu_count": torch.cuda.device_count(),
        "gpu_memory_gib": None,
        "driver": None,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nccl": None,
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "libraries": libraries | {"dali": f"{dali.name} {dali.version}" if dali else None},
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"], info["gpu_memory_gib"] = props.name, round(props.total_memory / 2**30, 1)
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            done = subprocess.run(query, capture_output=True, text=True, check=True)
            info["driver"] = done.stdout.splitlines()[0].strip()
    return info


def package_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _table(rows: list[dict[str, Any]]) -> list[str]:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return lines


def write_report(out: Path, report: dict[str, Any]) -> None:
    """``gpu_check.json`` (everything) and ``gpu_check.md`` (the same, to read)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    m = report["machine"]
    libraries = ", ".join(f"{name} {v or 'not installed'}" for name, v in m["libraries"].items())
    lines = [
        "# GPU check",
        "",
        f"Machine: {m['gpu'] or 'no GPU'} ({m['gpu_memory_gib'] or '–'} GiB, driver "
        f"{m['driver'] or '–'}), CUDA {m['cuda'] or '–'}, cuDNN {m['cudnn'] or '–'}, NCCL "
        f"{m['nccl'] or '–'}; {m['cpu']}, {m['cores']} cores; Python {m['python']}, torch "
        f"{m['torch']}, {libraries}. Mode: {m['mode']}.",
        f"Command: `{report['command']}`; {report['seconds']:.0f} s in all (--timeout "
        f"{report['timeout_s']:.0f} s); {report['schedule']}.",
        "",
        "| part | status | time (s) | budget (s) | reason |",
        "|---|---|---|---|---|",
    ]
    parts = report["parts"]
    lines += [
        f"| {p['name']} | {p['status']} | {p['seconds']:.1f} | {p['budget_s']:.0f} "
        f"| {_cell(p['reason'])} |"
        for p in parts
    ]
    lines += ["", "## Goals", "", *_table(report["goals"])]
    for p in parts:
        blocks = [[f"## {p['title']} (`{p['name']}`): {p['status']}"], [p["reason"]]]
        blocks += [_table(p["rows"]) if p["rows"] else [], *([note] for note in p["notes"])]
        blocks.append(["```", p["error_tail"], "```"] if p["error_tail"] else [])
        for block in blocks:
            lines += ["", *block] if any(block) else []
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every part, tiny, on the CPU")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks", help="report folder")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(os.environ.get("ADAACT_CACHE", "/tmp")) / "adaact-gpu-check",
        help="scratch: logs of the parts, their runs, the photo set (kept between runs)",
    )
    parser.add_argument("--timeout", type=float, default=470.0, help="seconds for the whole run")
    parser.add_argument("--only", nargs="+", choices=list(PARTS_BY_NAME), help="these parts")
    parser.add_argument("--part", choices=list(PARTS_BY_NAME), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    if args.part:  # a child process of the run
        return run_part(PARTS_BY_NAME[args.part], Context(args.smoke, args.work))
    if not args.smoke and not torch.cuda.is_available():
        print("No CUDA GPU here: nothing to check (--smoke runs every part, tiny, on the CPU).")
        return 0
    for folder in ("parts", "logs"):
        (args.work / folder).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    parts = [part for part in PARTS if not args.only or part.name in args.only]
    results = run_parts(parts, args)
    command = ["python", "-m", "benchmarks.gpu_check", *(sys.argv[1:] if argv is None else argv)]
    concurrent = ", ".join(part.name for part in parts if part.concurrent)
    report = {
        "command": " ".join(command),
        "schedule": f"all parts, {os.cpu_count()} at a time"
        if args.smoke
        else f"{concurrent} together, then the others one by one",
        "seconds": time.monotonic() - started,
        "timeout_s": args.timeout,
        "machine": machine_info(args.smoke),
        "parts": [asdict(result) for result in results],
        "goals": evaluate_goals(results, args.smoke),
    }
    write_report(args.out, report)
    failed = [result.name for result in results if result.status == "failed"]
    print(f"{report['seconds']:.0f} s; report in {args.out}/gpu_check.md; logs in {args.work}/logs")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
