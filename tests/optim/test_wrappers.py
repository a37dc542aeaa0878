"""AdaAct under DDP (two real gloo processes), torch.compile, and timm's registry."""

from __future__ import annotations

import copy

import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import adaact_dist
from adaact_dist import AdaAct
from adaact_dist.distributed import TorchStatsSync
from tests.optim.models import GroupedCNN
from tests.optim.test_adaact_oracle import batches, max_relative_error

STEPS, LOCAL_BATCH = 4, 3


def _ddp_worker(rank: int, world: int, init_file: str, results: dict) -> None:
    """The same run three ways: ``model=`` the DDP wrapper; no ``model=``, built before the
    wrapper as timm's train.py does; and through timm's registry, which adds the sync."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    for name in ("model=ddp", "no model", "timm registry"):
        torch.manual_seed(0)
        model = GroupedCNN(batchnorm=False).double()
        if name == "no model":
            optimizer = AdaAct(model.parameters(), lr=0.05, distributor=TorchStatsSync())
        elif name == "timm registry":
            optimizer = timm.optim.create_optimizer_v2(model, "adaact", lr=0.05)
        ddp = DistributedDataParallel(model)
        if name == "model=ddp":
            optimizer = AdaAct(ddp.parameters(), model=ddp, lr=0.05, distributor=TorchStatsSync())
        assert isinstance(optimizer.distributor, TorchStatsSync), name
        for x, y in batches("cnn", STEPS, batch=LOCAL_BATCH * world):
            mine = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
            F.cross_entropy(ddp(x[mine]), y[mine]).backward()
            optimizer.step()
            optimizer.zero_grad()
        results[(rank, name)] = [p.detach().clone() for p in model.parameters()]
    dist.destroy_process_group()


def test_ddp_ranks_stay_identical_and_match_one_process(tmp_path):
    world = 2
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "init"), results), nprocs=world)

    torch.manual_seed(0)
    model = GroupedCNN(batchnorm=False).double()
    optimizer = AdaAct(model.parameters(), model=model, lr=0.05)
    for x, y in batches("cnn", STEPS, batch=LOCAL_BATCH * world):
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    for name in ("model=ddp", "no model", "timm registry"):
        for p0, p1, p in zip(results[0, name], results[1, name], model.parameters()):
            assert torch.equal(p0, p1), name
            torch.testing.assert_close(p0, p.detach(), rtol=1e-9, atol=1e-12, msg=name)


def test_compiled_model_collects_the_same_statistics():
    torch.manual_seed(0)
    eager = GroupedCNN()
    compiled_source = copy.deepcopy(eager)
    compiled = torch.compile(compiled_source, backend="aot_eager")
    opt_eager = AdaAct(eager.parameters(), model=eager, lr=0.05)
    opt_compiled = AdaAct(compiled.parameters(), model=compiled, lr=0.05)
    assert [layer.name for layer in opt_compiled.layers] == [
        layer.name for layer in opt_eager.layers
    ]
    for x, y in batches("cnn", steps=3):
        for model, optimizer in ((eager, opt_eager), (compiled, opt_compiled)):
            F.cross_entropy(model(x.float()), y).backward()
            optimizer.step()
            optimizer.zero_grad()
    assert max_relative_error(compiled_source, eager) < 1e-5


def test_hooks_on_channels_last_inputs_compile_into_one_graph():
    """The statistics of NHWC convolutions stay inside dynamo's graph (a strided out= tensor
    in the window sums broke it at every convolution)."""
    # unpadded kernels over NHWC inputs: the patch-embedding case
    model = nn.Sequential(nn.Conv2d(3, 8, 2, stride=2), nn.ReLU(), nn.Conv2d(8, 4, 3))
    model = model.to(memory_format=torch.channels_last)
    AdaAct(model.parameters(), model=model)
    x = torch.randn(2, 3, 12, 10).contiguous(memory_format=torch.channels_last)
    explained = torch._dynamo.explain(model)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), [
        str(reason.reason) for reason in explained.break_reasons
    ]


def test_timm_registry_and_factory_use_timm_grouping():
    model = timm.create_model("resnet10t", num_classes=4)
    via_timm = timm.optim.create_optimizer_v2(
        model, "adaact", lr=0.5, weight_decay=1e-4, model=model
    )
    assert isinstance(via_timm, AdaAct)
    via_timm.remove_hooks()
    optimizer = adaact_dist.create_optimizer(model, lr=0.5, weight_decay=1e-4, betas=(0.8, 0.99))
    decays = sorted(group["weight_decay"] for group in optimizer.param_groups)
    assert decays == [0.0, 1e-4]
    no_decay = next(g for g in optimizer.param_groups if g["weight_decay"] == 0.0)
    assert all(p.dim() <= 1 for p in no_decay["params"])
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.99)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    before = model.fc.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.fc.weight)
