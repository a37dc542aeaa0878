"""AdaAct built without ``model=`` through ``deepspeed_initialize``: ZeRO-1 on 2 CPU ranks
steps exactly as with ``model=``."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from adaact_dist import AdaAct
from adaact_dist.distributed import op_builds
from tests.distributed.common import ds_config, make_model, micro_batch, param_groups

STEPS = 3


def _worker(rank: int, world: int, port: int, results: dict) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )  # fmt: skip
    from adaact_dist.distributed import deepspeed_initialize, init_distributed

    torch.set_num_threads(1)
    init_distributed(timeout_s=120)
    for name in ("model=", "no model"):
        model = make_model(batchnorm=False)
        groups = param_groups(model)
        if name == "model=":
            optimizer = AdaAct(groups, model=model, betas=(0.9, 0.99))
        else:
            optimizer = AdaAct(groups, betas=(0.9, 0.99))
        engine, *_ = deepspeed_initialize(model=model, optimizer=optimizer, config=ds_config(1))
        for step in range(1, STEPS + 1):
            x, y = micro_batch(step, rank)
            engine.backward(F.cross_entropy(engine(x), y))
            engine.step()
        results[rank, name] = {
            "params": [p.detach().clone() for p in model.parameters()],
            "layers": [layer.name for layer in optimizer.layers],
            "stats": optimizer.statistics_state_dict(),
        }
    dist.destroy_process_group()


def test_zero1_without_model_steps_as_with_model(monkeypatch):
    # Build DeepSpeed's CPU comm op here, if no install did, not inside the ranks' rendezvous.
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv(op_builds.ENV, os.environ.get(op_builds.ENV, ""))
    op_builds.build_cpu_comm_op()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, port, results), nprocs=2)
    for rank in (0, 1):
        given, found = results[rank, "model="], results[rank, "no model"]
        assert found["layers"] == given["layers"]
        for p, q in zip(given["params"], found["params"]):
            assert torch.equal(p, q)
        for name, entry in given["stats"]["layers"].items():
            assert torch.equal(entry["exp_avg_sq"], found["stats"]["layers"][name]["exp_avg_sq"])
    for p, q in zip(results[0, "no model"]["params"], results[1, "no model"]["params"]):
        assert torch.equal(p, q)
