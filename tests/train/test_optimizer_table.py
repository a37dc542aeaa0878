"""Registering an optimizer spec is all it takes: the config, the ZeRO refusal rule, the trainer
and both studies know it, with nothing else edited."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from adaact_dist.study import cli as compare_cli
from adaact_dist.study import critical_cli
from adaact_dist.study.critical_batch import Plan, SeedRule
from adaact_dist.study.plotting import optimizer_color
from adaact_dist.study.recipes import study_specs
from adaact_dist.train import ConfigError, load_config
from adaact_dist.train.optimizers import OPTIMIZERS, OptimizerSpec, register_optimizer
from tests.train.helpers import PYTHON, ROOT, TINY, env, write_config


def build_rmsprop(model, spec, lr):
    return torch.optim.RMSprop(model.parameters(), lr=lr, weight_decay=spec.weight_decay)


RMSPROP = OptimizerSpec(
    name="rmsprop",
    build=build_rmsprop,
    per_tensor=True,  # not true of RMSprop: here to see the ZeRO rule follow the spec
    base_lr=1e-3,
    scaling="sqrt",
    weight_decay=1e-5,
    sweep_lrs=(1e-3, 3e-3),
    color="C5",
)


@pytest.fixture
def rmsprop():
    register_optimizer(RMSPROP)
    yield RMSPROP
    del OPTIMIZERS[RMSPROP.name]


def _config(tmp_path: Path, **optim) -> Path:
    return write_config(
        tmp_path / "c.yaml",
        TINY,
        run={"output_dir": str(tmp_path / "run"), "stop_after_steps": 4},
        optim={"name": "rmsprop", "lr": 1e-3, **optim},
    )


def test_config_knows_a_registered_name_and_its_zero_rule(tmp_path):
    path = _config(tmp_path)
    with pytest.raises(ConfigError, match=r"optim.name='rmsprop'.*must be one of 'adaact', 'sgd'"):
        load_config(path)
    register_optimizer(RMSPROP)
    try:
        assert load_config(path).optim.name == "rmsprop"
        with pytest.raises(ConfigError, match=r"must be 0 with optim.name='rmsprop'"):
            load_config(path, ["distributed.zero_stage=1"])
        with pytest.raises(ValueError, match="'rmsprop' is already registered"):
            register_optimizer(RMSPROP)
    finally:
        del OPTIMIZERS[RMSPROP.name]


def test_trainer_builds_and_checkpoints_a_registered_optimizer(tmp_path):
    """A real (one-process) trainer run; the spec is registered in that process, as a user's
    launch script would."""
    code = (
        "import sys; from adaact_dist.train.optimizers import register_optimizer; "
        "from tests.train.test_optimizer_table import RMSPROP; register_optimizer(RMSPROP); "
        "from adaact_dist.train.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [PYTHON, "-c", code, "--config", str(_config(tmp_path))],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    checkpoint = tmp_path / "run" / "checkpoints" / "step00000004" / "mp_rank_00_model_states.pt"
    state = torch.load(checkpoint, weights_only=False)["optimizer"]["state"]
    assert state and all(set(s) == {"step", "square_avg"} for s in state.values())


def test_studies_know_a_registered_optimizer(rmsprop, tmp_path):
    critical = critical_cli.build_parser().parse_args(["--optimizers", "adaact,rmsprop"])
    assert critical.optimizers == ["adaact", "rmsprop"]
    assert "rmsprop" in critical_cli.build_parser().parse_args([]).optimizers
    plan = Plan(
        out=tmp_path,
        task="digits",
        optimizers=["rmsprop"],
        batch_sizes=[64, 256],
        seeds=SeedRule(1),
        target=90.0,
        max_steps=100,
    )
    cells = plan.cells()
    assert [c.center for c in cells] == [pytest.approx(1e-3), pytest.approx(2e-3)]  # sqrt rule
    run = plan.run(cells[1], cells[1].center, seed=0, budget=100)
    assert {"optim.name=rmsprop", "optim.weight_decay=1e-05"} <= set(run.overrides())

    compare = compare_cli.build_parser().parse_args(["--optimizers", "rmsprop"])
    (spec,) = study_specs(
        tmp_path, tasks=["digits"], optimizers=compare.optimizers, batch_sizes=[256], seeds=[0],
        epochs=4,
    )  # fmt: skip
    assert (spec.optimizer, spec.lr, spec.weight_decay) == ("rmsprop", pytest.approx(2e-3), 1e-5)
    assert optimizer_color("rmsprop") == "C5"
