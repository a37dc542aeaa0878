"""The parts of ``gpu_check.py`` that check correctness, and what every part shares.

Each part takes a :class:`Context` (``--smoke`` or not, a scratch folder) and returns an
:class:`Outcome` (figures, table rows, notes, failed checks), or raises :class:`Skipped`
saying why it cannot run here. The timed parts are in ``gpu_timing.py``.
"""

from __future__ import annotations

import collections
import importlib.metadata
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import torch

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


# -- 1. correctness on CUDA ----------------------------------------------------------------------
def run_pytest(ctx: Context, name: str, args: list[str]) -> Outcome:
    """Run pytest on ``args`` (in this part's process) and count its JUnit report's outcomes."""
    require("pytest")
    import pytest

    report = ctx.work / f"{name}.xml"
    report.unlink(missing_ok=True)
    pytest.main(["-q", "-p", "no:cacheprovider", f"--junitxml={report}", *args])
    if not report.exists():
        raise RuntimeError("pytest wrote no JUnit report (its output is in the log)")
    totals, per_module = collections.Counter(), collections.defaultdict(collections.Counter)
    failures, skip_reasons = [], collections.Counter()
    for case in ElementTree.parse(report).iter("testcase"):
        found = [child for child in case if child.tag in ("failure", "error", "skipped")]
        kind = (
            {"failure": "failed", "error": "failed"}.get(found[0].tag, "skipped")
            if found
            else "passed"
        )
        totals[kind] += 1
        per_module[case.get("classname", "?")][kind] += 1
        message = (found[0].get("message") or "").splitlines()[0:1] if found else []
        if kind == "failed":
            failures.append(f"{case.get('classname')}::{case.get('name')}: {''.join(message)}")
        elif kind == "skipped":
            skip_reasons["".join(message)] += 1
    outcome = Outcome(metrics={k: totals[k] for k in ("passed", "failed", "skipped")})
    outcome.rows = [
        {"tests": module, **{k: c[k] for k in ("passed", "failed", "skipped")}}
        for module, c in per_module.items()
    ]
    outcome.failures = failures or ([] if totals else ["pytest selected no test"])
    if totals and not totals["passed"] and not failures:
        reason, _ = skip_reasons.most_common(1)[0]
        raise Skipped(f"all {totals['skipped']} selected tests skipped: {reason}")
    return outcome


def part_optim_tests(ctx: Context) -> Outcome:
    """The optimizer-core tests on the CUDA device: float64 oracle, fp32/bf16 steps, statistics
    kernels in every layout, the timm model zoo (``pytest tests/optim -k cuda``)."""
    return run_pytest(ctx, "optim_tests", [*ctx.sizes.optim_tests, "-k", "cuda"])


FP32_TOL = 1e-4  # cuDNN's fp32 kernels (TF32 off) against the CPU control: summation order only
LOW_TOL = 2e-2  # bf16/fp16 weights and activations against the fp32 control, as on CPU


def part_deepspeed_nccl(ctx: Context) -> Outcome:
    """1-rank NCCL runs of ZeRO 0/1/2 in fp32, bf16 and fp16 (dynamic loss scaling, which the CPU
    suite cannot run), with overflow steps, against the CPU suite's one-process controls."""
    require("deepspeed")
    if ctx.device.type != "cuda":
        raise Skipped("NCCL needs a CUDA GPU (the CPU suites in tests/distributed run on gloo)")
    out = ctx.work / "deepspeed"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    worker = ROOT / "tests" / "distributed" / "worker.py"
    command = [
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1",
        "--master_port", str(free_port()), str(worker),
        "--suite", "gpu", "--device", "cuda", "--out", str(out),
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    return check_gpu_suite(torch.load(out / "gpu.pt", weights_only=False)[0])


def check_gpu_suite(results: dict) -> Outcome:
    """The CPU tests' checks on the GPU suite's runs: weights and ``V`` near the controls, ranks
    identical, one statistics sync per step, overflow steps skipped without a trace."""
    from tests.distributed.common import max_relative_error, named_params, run_control

    outcome = Outcome()
    fp32 = run_control(steps=6, micro_batches=2)
    low = run_control(steps=5, micro_batches=2, batchnorm=False)
    controls = {
        "fp32": (named_params(fp32["model"]), FP32_TOL),
        "low": (named_params(low["model"]), LOW_TOL),
    }

    def check(label: str, run: dict, control: str, **checks: bool) -> None:
        want, tolerance = controls[control]
        error = max_relative_error(run["params"], want)
        checks = {
            f"weights within {tolerance:g} of the control": error < tolerance,
            "ranks identical": all(run["identical"]),
            **checks,
        }
        missed = [text for text, held in checks.items() if not held]
        outcome.failures += [f"{label}: {text} failed" for text in missed]
        outcome.rows.append(
            {
                "run": label,
                "engine optimizer": run["wrapper"],
                "max rel. error vs control": error,
                "skipped steps": run["skipped"],
                "checks": "; ".join(missed) or f"all {len(checks)} hold",
            }
        )

    precisions = ["bf16", "fp16"] if results["fp16_supported"] else ["bf16"]
    if not results["fp16_supported"]:
        outcome.failures.append("DeepSpeed's accelerator reports no fp16 on this GPU")
    for stage in (0, 1, 2):
        run = results[f"fp32_s{stage}"]
        got, want = run["second_moments"][6], fp32["second_moments"][6]
        v_error = ((got - want).norm() / want.norm()).item()
        check(
            f"fp32 ZeRO-{stage}",
            run,
            "fp32",
            **{
                f"V within {FP32_TOL:g}": v_error < FP32_TOL,
                "one sync per step": run["sync_calls"] == 6,
            },
        )
        for precision in precisions:
            straight = results[f"{precision}_s{stage}"]
            skipped = results[f"{precision}_s{stage}_overflow"]
            label = f"{precision} ZeRO-{stage}"
            check(label, straight, "low", **{"no step skipped": not straight["skipped"]})
            same_weights = all(torch.equal(a, b) for a, b in zip(straight["flat"], skipped["flat"]))
            not_folded = (
                skipped["stats_step"] == straight["stats_step"] == 5
                and skipped["layer_steps"] == straight["layer_steps"]
                and skipped["state_steps"] == straight["state_steps"]
                and torch.equal(skipped["second_moments"][5], straight["second_moments"][5])
            )
            check(
                f"{label}, overflow before step 3",
                skipped,
                "low",
                **{
                    "the overflow step skipped": skipped["skipped"] == 1,
                    "same weights as without it": same_weights,
                    "its statistics not folded": not_folded,
                },
            )
    outcome.metrics = {"runs": len(outcome.rows), "failed_checks": len(outcome.failures)}
    return outcome


def part_dali_test(ctx: Context) -> Outcome:
    """DALI's "mixed" (GPU) decoding test, which CPU machines skip."""
    require("nvidia.dali")
    if ctx.device.type != "cuda":
        raise Skipped("DALI's 'mixed' decoding needs a CUDA GPU")
    return run_pytest(ctx, "dali_test", ["tests/data/test_dali.py", "-k", "mixed_gpu_decoding"])


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

    train(load_config("demo", overrides))  # what launch/train_imagenet.py --config demo runs
    summary = json.loads((run_dir / "summary.json").read_text())
    keys = ("final_top1", "best_top1", "epochs_done", "steps", "wall_time_s", "images_per_s")
    outcome = Outcome(metrics={key: summary[key] for key in keys})
    data = "DALI, mixed decoding on the GPU" if gpu else "webdataset, CPU"
    outcome.rows = [{"data": data, **outcome.metrics}]
    if not summary["finished"]:
        outcome.failures.append(f"the run stopped early: {summary['stop_reason']}")
    elif gpu and summary["final_top1"] < DEMO_MIN_TOP1:
        outcome.failures.append(
            f"final top-1 {summary['final_top1']:.1f} % is below {DEMO_MIN_TOP1} % "
            "(the CPU demo reaches 98.1 %)"
        )
    return outcome
