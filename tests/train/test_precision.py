"""bf16 where the device has none: fp32 and one warning under autocast, a stop under DeepSpeed's
own bf16 weights; the decision with the device facts injected, then the trainer on this CPU."""

from __future__ import annotations

import json
import logging
import platform
import subprocess
from pathlib import Path

import pytest
import torch

from adaact_dist.train import plan as plan_module
from adaact_dist.train.config import ConfigValueError
from adaact_dist.train.config_io import load_config
from adaact_dist.train.plan import has_native_bf16, make_plan, run_precision
from tests.train.helpers import PYTHON, ROOT, TINY, env, write_config

CPU = torch.device("cpu")
WARNING = "distributed.precision=bf16, but this CPU has no native bf16"


@pytest.mark.parametrize("mode", ["autocast", "deepspeed"])
@pytest.mark.parametrize("requested", ["fp32", "bf16", "fp16"])
def test_only_bf16_without_native_bf16_changes(requested, mode):
    assert run_precision(requested, mode=mode, native_bf16=True) == requested
    if requested != "bf16":
        assert run_precision(requested, mode=mode, native_bf16=False) == requested
    elif mode == "autocast":
        assert run_precision(requested, mode=mode, native_bf16=False) == "fp32"
    else:  # DeepSpeed's bf16 weights: a fallback would change what the checkpoints hold
        with pytest.raises(ConfigValueError, match=r"distributed.precision='bf16'.*fp32 or fp16"):
            run_precision(requested, mode=mode, native_bf16=False)


@pytest.mark.skipif(
    platform.machine() != "x86_64" or not Path("/proc/cpuinfo").is_file(),
    reason="reads the x86 CPU flags from Linux's /proc/cpuinfo",
)
def test_cpu_fact_is_the_cpus_avx512_bf16_flag():
    flags = next(
        line.split(":", 1)[1].split()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("flags")
    )
    assert has_native_bf16(CPU) == ("avx512_bf16" in flags)


@pytest.fixture
def trainer_log(caplog):
    """``caplog`` seeing the trainer's logger (which does not propagate to the root logger)."""
    logger = logging.getLogger("adaact_dist")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.mark.parametrize("native", [True, False])
def test_plan_for_a_device_follows_its_bf16(monkeypatch, trainer_log, native):
    monkeypatch.setattr(plan_module, "has_native_bf16", lambda device: native)
    config = load_config("a2_resnet50")
    assert make_plan(config, world_size=2).precision == "bf16"  # no device: as configured
    assert trainer_log.records == []
    assert make_plan(config, world_size=2, device=CPU).precision == ("bf16" if native else "fp32")
    warnings = [r.getMessage() for r in trainer_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == (0 if native else 1)
    assert all(WARNING in w and "distributed.precision=fp32" in w for w in warnings)
    native_weights = load_config("a2_resnet50", ["distributed.precision_mode=deepspeed"])
    if native:
        assert make_plan(native_weights, world_size=2, device=CPU).precision == "bf16"
    else:
        with pytest.raises(ConfigValueError, match="precision_mode=deepspeed"):
            make_plan(native_weights, world_size=2, device=CPU)


def _run_bf16(tmp_path, *, native: bool | None) -> tuple[dict, dict, str]:
    """One process, two steps of a bf16 autocast recipe; ``native`` overrides the CPU's fact."""
    run = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml",
        TINY,
        run={"output_dir": str(run), "stop_after_steps": 2},
        distributed={"zero_stage": 0, "precision": "bf16", "precision_mode": "autocast"},
    )
    inject = "" if native is None else f"plan.has_native_bf16 = lambda device: {native}; "
    code = (
        f"import sys; from adaact_dist.train import plan; {inject}"
        "from adaact_dist.train.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [PYTHON, "-c", code, "--config", str(config)],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    plan = json.loads((run / "plan.json").read_text())
    deepspeed = json.loads((run / "deepspeed.json").read_text())
    return plan, deepspeed, output


@pytest.mark.parametrize("native", [None, False], ids=["this-cpu", "cpu-without-bf16"])
def test_trainer_computes_in_what_the_device_does_well(tmp_path, native):
    plan, deepspeed, output = _run_bf16(tmp_path, native=native)
    fast = has_native_bf16(CPU) if native is None else native
    assert plan["precision"] == ("bf16" if fast else "fp32")
    assert deepspeed["torch_autocast"]["enabled"] == fast
    assert output.count(WARNING) == (0 if fast else 1)
