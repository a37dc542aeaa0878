"""``python -m benchmarks.gpu_check``: ``--smoke`` runs every part (or says why not) and writes a
well-formed report; the parts that run the suite's CUDA tests report each test's outcome;
without a GPU and without ``--smoke`` it says so and exits 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PARTS = [
    "optim_tests", "deepspeed_nccl", "dali_test", "loaders",
    "throughput", "optimizer_core", "compile", "demo",
]  # fmt: skip
TORCH_ONLY = ["throughput", "optimizer_core", "compile"]  # need nothing but torch and timm
MACHINE = ["gpu", "gpu_count", "driver", "cuda", "cudnn", "nccl", "cpu", "cores", "python", "torch"]


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "benchmarks.gpu_check", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("gpu-check")
    done = gpu_check("--smoke", "--out", str(out), "--work", str(out / "work"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_smoke_report_has_every_part_with_a_status(smoke):
    report, markdown = smoke
    parts = {part["name"]: part for part in report["parts"]}
    assert list(parts) == PARTS
    for name, part in parts.items():
        assert part["status"] in ("ok", "skipped"), (
            f"{name}: {part['reason']}\n{part['error_tail']}"
        )
        assert part["status"] == "ok" or part["reason"], f"{name} skipped without a reason"
        assert 0 <= part["seconds"] <= part["budget_s"] + 5
        assert f"`{name}`): {part['status']}" in markdown
    for name in TORCH_ONLY:
        assert parts[name]["status"] == "ok" and parts[name]["rows"]
    if not torch.cuda.is_available():  # what cannot run on a CPU says so
        for name in ("deepspeed_nccl", "dali_test", "optim_tests"):
            assert parts[name]["status"] == "skipped"


def test_smoke_report_names_the_machine_and_claims_no_goal(smoke):
    report, markdown = smoke
    machine = report["machine"]
    assert all(key in machine for key in MACHINE) and machine["torch"] == torch.__version__
    assert {"timm", "deepspeed", "dali"} <= set(machine["libraries"])
    assert machine["mode"].startswith("smoke") and "Mode: smoke" in markdown
    assert report["goals"] and all(goal["result"].startswith("n/a") for goal in report["goals"])
    assert "| goal | measured | target | result |" in markdown


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    done = gpu_check("--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"))
    assert done.returncode == 0 and "No CUDA GPU here" in done.stdout
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


SAMPLE_TESTS = """
import pytest

def test_passes(record_property):
    record_property("max rel. error", 1.23456e-5)
    record_property("engine optimizer", "BF16_Optimizer")

def test_fails():
    assert 1 + 1 == 3, "arithmetic broke"

def test_skips():
    pytest.skip("needs a GPU")

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

def test_errors_in_setup(broken):
    pass

def test_not_selected():
    pass
"""


def test_a_pytest_part_reports_each_tests_outcome_why_and_figures(tmp_path):
    (tmp_path / "test_sample.py").write_text(SAMPLE_TESTS)
    # pytest's rootdir, which test ids are relative to, then is tmp_path wherever the checkout
    # lies (started from the checkout, it would be the common ancestor of both folders).
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    script = (
        "import dataclasses, json, sys\n"
        "from benchmarks.gpu_parts import run_pytest\n"
        "print(json.dumps(dataclasses.asdict(run_pytest([sys.argv[1]], 'not not_selected'))))"
    )
    command = [sys.executable, "-c", script, str(tmp_path / "test_sample.py")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    outcome = json.loads(done.stdout.splitlines()[-1])  # after pytest's own output
    outcomes = {"passes": "passed", "fails": "failed", "skips": "skipped"}
    outcomes["errors_in_setup"] = "failed"
    assert outcome["metrics"]["tests"] == {
        f"test_sample.py::test_{name}": kind for name, kind in outcomes.items()
    }
    counts = {"passed": 1, "failed": 2, "skipped": 1}
    assert {key: outcome["metrics"][key] for key in counts} == counts
    assert outcome["rows"] == [{"tests": "test_sample.py", **counts}]
    assert outcome["failures"] == [
        "test_sample.py::test_fails: AssertionError: arithmetic broke",
        "test_sample.py::test_errors_in_setup: RuntimeError: fixture broke",
    ]
    assert outcome["notes"] == [
        "`test_sample.py::test_passes`: max rel. error 1.23e-05; engine optimizer BF16_Optimizer",
        "1 skipped: needs a GPU",
    ]
