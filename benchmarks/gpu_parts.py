"""The parts of ``gpu_check.py`` that check correctness, and what every part shares.

Each part takes a :class:`Context` (``--smoke`` or not, a scratch folder) and returns an
:class:`Outcome` (figures, table rows, notes, failed checks), or raises :class:`Skipped`
saying why it cannot run here. The correctness checks are the test suite's CUDA tests, which
:func:`run_pytest` runs as they are; the demo part trains the demo recipe to its end. The timed
parts are in ``gpu_timing.py``.
"""

from __future__ import annotations

import collections
import importlib.util
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import pytest

ROOT = Path(__file__).resolve().parents[1]


class Skipped(Exception):
    """The part cannot run here (no GPU, a package missing); the message says why."""


@dataclass(frozen=True)
class ModelSpec:
    """A timm model at the size that the timed parts measure it."""

    name: str
    image_size: int
    batch: int
    channels_last: bool
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 1000


@dataclass(frozen=True)
class Sizes:
    """How much each part does: the GPU run's sizes, or ``--smoke``'s tiny ones."""

    models: dict[str, ModelSpec]
    optim_tests: tuple[str, ...]  # where pytest looks for the cuda tests
    photos: int  # loaders: photo set size, batch, timed epochs
    loader_batch: int
    loader_epochs: int
    warmup_steps: int  # throughput: untimed first segment, then rounds x steps per variant
    steps: int
    rounds: int
    repeats: int  # optimizer core: fwd+bwd and step() repetitions
    compile_backend: str
    channels_last_trace: ModelSpec | None  # compile: whose graphs dynamo makes, channels-last
    demo_overrides: tuple[str, ...]  # to the recipe


GPU_SIZES = Sizes(
    models={
        "cnn": ModelSpec("resnet50", 224, 256, channels_last=True),
        "vit": ModelSpec("deit_small_patch16_224", 224, 256, channels_last=False),
    },
    optim_tests=("tests/optim",),
    photos=2048,
    loader_batch=256,
    loader_epochs=3,
    warmup_steps=8,
    steps=12,
    rounds=3,
    repeats=15,
    compile_backend="inductor",
    channels_last_trace=ModelSpec("resnet18", 224, 2, channels_last=True),
    demo_overrides=(),
)
SMOKE_SIZES = Sizes(
    models={
        "cnn": ModelSpec(  # the demo's narrow resnet10t
            "resnet10t", 32, 8, True, {"channels": (16, 32, 64, 128), "stem_width": 16}, 10
        ),
        "vit": ModelSpec(
            "deit_tiny_patch16_224", 32, 8, False, {"img_size": 32, "depth": 2}, num_classes=10
        ),
    },
    optim_tests=("tests/optim/test_adaact_oracle.py",),  # the pytest run, without timm's zoo
    photos=32,
    loader_batch=8,
    loader_epochs=1,
    warmup_steps=1,
    steps=2,
    rounds=1,
    repeats=3,
    # inductor's C++ code generation takes 3 minutes on 2 CPU cores; dynamo alone traces the hooks
    compile_backend="eager",
    channels_last_trace=None,  # 20 s of dynamo tracing on 2 CPU cores
    demo_overrides=("schedule.epochs=1", "schedule.warmup_epochs=0"),
)


@dataclass
class Context:
    """What every part gets: the mode, its sizes and a scratch folder."""

    smoke: bool
    work: Path

    @property
    def device(self) -> torch.device:
        use_cuda = torch.cuda.is_available() and not self.smoke
        return torch.device("cuda" if use_cuda else "cpu")

    @property
    def sizes(self) -> Sizes:
        return SMOKE_SIZES if self.smoke else GPU_SIZES


@dataclass
class Outcome:
    """What a part measured: figures (for the goals), table rows, notes, and failed checks."""

    metrics: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def require(module: str) -> None:
    """Skip the part when ``module`` cannot be imported here."""
    if not installed(module):
        raise Skipped(f"{module} is not installed")


def precision(device: torch.device) -> str:
    return "bf16 autocast" if device.type == "cuda" else "fp32"


def autocast(device: torch.device):
    """bf16 autocast on the GPU; fp32 on the CPU (``--smoke``: CPU bf16 is slow, and its speed
    says nothing about a GPU's)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


# -- 1. correctness on CUDA: the test suite's CUDA tests, run by pytest as they are -----------
class OutcomeRecorder:
    """A pytest plugin: each test's outcome (``failed`` if a phase failed, else ``skipped`` if
    one skipped, else ``passed``), the first line of why, and what it recorded with pytest's
    ``record_property``."""

    def __init__(self) -> None:
        self.tests: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        test = self.tests.setdefault(
            report.nodeid, {"outcome": "passed", "why": "", "properties": {}}
        )
        if report.failed or (report.skipped and test["outcome"] == "passed"):
            test["outcome"], test["why"] = report.outcome, _why(report)
        test["properties"].update(report.user_properties)


def _why(report: pytest.TestReport) -> str:
    """A skip's reason, or the first line of a failure's error."""
    if isinstance(report.longrepr, tuple):  # a skip: (file, line, "Skipped: reason")
        return report.longrepr[2].removeprefix("Skipped: ")
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else report.longreprtext
    return (text.strip().splitlines() or [""])[0]


def run_pytest(paths: Sequence[str], keyword: str) -> Outcome:
    """Run pytest on the tests in ``paths`` (relative to the repository root) whose names match
    ``keyword``, in this part's process, and report their outcomes: counts per file, the failed
    tests with why, what the tests recorded, and why the skipped ones skipped."""
    require("pytest")
    missing = [path for path in paths if not (ROOT / path).exists()]
    if missing:  # a copy of the project without its tests/
        raise Skipped(f"{', '.join(missing)} not in this copy of the project")
    import pytest

    outcomes = OutcomeRecorder()
    arguments = ["-q", "-p", "no:cacheprovider", *(str(ROOT / path) for path in paths)]
    status = pytest.ExitCode(pytest.main([*arguments, "-k", keyword], plugins=[outcomes]))
    tests = outcomes.tests
    totals = collections.Counter(test["outcome"] for test in tests.values())
    outcome = Outcome(metrics={kind: totals[kind] for kind in ("passed", "failed", "skipped")})
    outcome.metrics["tests"] = {nodeid: test["outcome"] for nodeid, test in tests.items()}
    per_file = collections.defaultdict(collections.Counter)
    for nodeid, test in tests.items():
        per_file[nodeid.split("::")[0]][test["outcome"]] += 1
    outcome.rows = [
        {"tests": file, **{kind: counts[kind] for kind in ("passed", "failed", "skipped")}}
        for file, counts in per_file.items()
    ]
    outcome.failures = [
        f"{nodeid}: {test['why']}" for nodeid, test in tests.items() if test["outcome"] == "failed"
    ]
    if status == pytest.ExitCode.NO_TESTS_COLLECTED:
        outcome.failures.append("pytest selected no test")
    elif status not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        outcome.failures.append(
            f"pytest exited with status {status.value} ({status.name}); its output is in the log"
        )
    skipped = collections.Counter(t["why"] for t in tests.values() if t["outcome"] == "skipped")
    if tests and not totals["passed"] and not totals["failed"] and not outcome.failures:
        reason, _ = skipped.most_common(1)[0]
        raise Skipped(f"all {totals['skipped']} selected tests skipped: {reason}")
    outcome.notes = [
        f"`{nodeid}`: " + "; ".join(f"{key} {_note_value(value)}" for key, value in props)
        for nodeid, test in tests.items()
        if (props := test["properties"].items())
    ]
    outcome.notes += [f"{count} skipped: {reason}" for reason, count in skipped.items()]
    return outcome


def _note_value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def part_optim_tests(ctx: Context) -> Outcome:
    """The optimizer-core tests on the CUDA device: float64 oracle, fp32/bf16 steps, statistics
    kernels in every layout, the timm model zoo (``pytest tests/optim -k cuda``)."""
    return run_pytest(ctx.sizes.optim_tests, "cuda")


def part_deepspeed_nccl(ctx: Context) -> Outcome:
    """1-rank NCCL runs of ZeRO 0/1/2 in fp32, bf16 and fp16 (dynamic loss scaling, which the CPU
    suite cannot run), with overflow steps, against the CPU suite's one-process controls
    (``pytest tests/distributed/test_deepspeed.py -k nccl``)."""
    require("deepspeed")
    if ctx.device.type != "cuda":
        raise Skipped("NCCL needs a CUDA GPU (the CPU suites in tests/distributed run on gloo)")
    return run_pytest(["tests/distributed/test_deepspeed.py"], "nccl")


def part_dali_test(ctx: Context) -> Outcome:
    """DALI's "mixed" (GPU) decoding test, which CPU machines skip."""
    require("nvidia.dali")
    if ctx.device.type != "cuda":
        raise Skipped("DALI's 'mixed' decoding needs a CUDA GPU")
    return run_pytest(["tests/data/test_dali.py"], "mixed_gpu_decoding")


# -- 6. a real run ---------------------------------------------------------------------------
DEMO_MIN_TOP1 = 90.0  # the CPU demo reaches 98.1 %; far below means a broken GPU path


def part_demo(ctx: Context) -> Outcome:
    """The demo recipe (digits, resnet10t, AdaAct on ZeRO-1) on the GPU, data through DALI
    with "mixed" decoding, to its end, as ``launch/train_imagenet.py`` runs it (``--smoke``: on
    the CPU with the recipe's webdataset loader, one epoch)."""
    require("deepspeed")
    gpu = ctx.device.type == "cuda"
    if gpu:
        require("nvidia.dali")
    run_dir = ctx.work / "demo-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [
        f"data.backend={'dali' if gpu else 'wds'}",
        f"distributed.device={ctx.device.type}",
        "data.num_workers=2",
        f"run.output_dir={run_dir}",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        "logging.plots=false",
        *ctx.sizes.demo_overrides,
    ]
    from adaact_dist.train import load_config, train
    from adaact_dist.train.run_summary import RunSummary

    train(load_config("demo", overrides))  # what launch/train_imagenet.py --config demo runs
    summary = RunSummary.read(run_dir)
    keys = ("final_top1", "best_top1", "epochs_done", "steps", "wall_time_s", "images_per_s")
    outcome = Outcome(metrics={key: getattr(summary, key) for key in keys})
    data = "DALI, mixed decoding on the GPU" if gpu else "webdataset, CPU"
    outcome.rows = [{"data": data, **outcome.metrics}]
    if not summary.finished:
        outcome.failures.append(f"the run stopped early: {summary.stop_reason}")
    elif gpu and summary.final_top1 < DEMO_MIN_TOP1:
        outcome.failures.append(
            f"final top-1 {summary.final_top1:.1f} % is below {DEMO_MIN_TOP1} % "
            "(the CPU demo reaches 98.1 %)"
        )
    return outcome
