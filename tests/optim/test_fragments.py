"""AdaAct over flat tensors described by fragments equals AdaAct over the parameters.

This emulates what ZeRO does, in one process and float64: each group's parameters are
concatenated, padded and cut into equal slices (so runs start and end inside rows and
inside convolution groups), the optimizer sees only the slices, and the updated slices
are copied back. No DeepSpeed here; ``tests/distributed`` runs the real thing.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaact_dist import AdaAct
from adaact_dist.optim import Fragment
from tests.optim.test_adaact_oracle import batches, make_model, max_relative_error, two_groups

PAD_VALUE = 7.0


def shard(optimizer: AdaAct, parts: int, pad: int = 3) -> list[tuple[torch.Tensor, list]]:
    """Replace every group's parameters by ``parts`` padded flat slices, mapped."""
    shards = []
    for group in optimizer.param_groups:
        params = list(group["params"])
        size = -(-(sum(p.numel() for p in params) + pad) // parts)
        flats = []
        for k in range(parts):
            low, high = k * size, (k + 1) * size
            flat = torch.full((size,), PAD_VALUE, dtype=params[0].dtype)
            fragments, position = [], 0
            for param in params:
                start, end = max(position, low), min(position + param.numel(), high)
                if start < end:
                    fragments.append(Fragment(param, start - position, start - low, end - start))
                    run = param.detach().reshape(-1)[start - position : end - position]
                    flat[start - low : end - low] = run
                position += param.numel()
            optimizer.map_flat_tensor(flat, fragments)
            flats.append(flat)
            shards.append((flat, fragments))
        group["params"] = flats
    return shards


def step_sharded(optimizer, shards, group_by_group: bool) -> None:
    for flat, fragments in shards:
        flat.grad = torch.ones_like(flat)  # padding gets a gradient too: it must be ignored
        for f in fragments:
            grad = f.param.grad.reshape(-1)[f.param_offset : f.param_offset + f.numel]
            flat.grad[f.flat_offset : f.flat_offset + f.numel] = grad
    if group_by_group:  # like ZeRO: one step() per group, param_groups swapped to it
        groups = optimizer.param_groups
        for group in groups:
            optimizer.param_groups = [group]
            optimizer.step()
        optimizer.param_groups = groups
    else:
        optimizer.step()
    for flat, fragments in shards:
        for f in fragments:
            run = flat[f.flat_offset : f.flat_offset + f.numel]
            f.param.data.view(-1)[f.param_offset : f.param_offset + f.numel] = run


@pytest.mark.parametrize("parts", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("name", ["cnn", "mlp"])
@pytest.mark.parametrize("group_by_group", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
def test_flat_slices_match_whole_parameters(name, parts, group_by_group, foreach):
    rule = "sgd_momentum" if parts % 2 else "sgd"
    model = make_model(name)
    reference = copy.deepcopy(model)
    kwargs = dict(stats_sync_every=2, other_rule=rule)
    optimizer = AdaAct(two_groups(model), model=model, foreach=foreach, **kwargs)
    expected = AdaAct(two_groups(reference), model=reference, **kwargs)
    shards = shard(optimizer, parts)
    for x, y in batches(name, steps=5):
        for net in (model, reference):
            F.cross_entropy(net(x), y).backward()
        step_sharded(optimizer, shards, group_by_group)
        expected.step()
        for opt, net in ((optimizer, model), (expected, reference)):
            opt.zero_grad()
            net.zero_grad()
    assert max_relative_error(model, reference) < 1e-12
    assert max_relative_error(model, make_model(name)) > 1e-3
    for flat, fragments in shards:
        covered = torch.zeros(flat.numel(), dtype=torch.bool)
        for f in fragments:
            covered[f.flat_offset : f.flat_offset + f.numel] = True
        assert (flat[~covered] == PAD_VALUE).all()
    for a, b in zip(optimizer.layers, expected.layers):
        assert torch.equal(a.second_moment, b.second_moment) and a.step == b.step == 5


def test_sharding_splits_rows_and_conv_groups():
    model = make_model("cnn")
    optimizer = AdaAct(two_groups(model), model=model)
    shard(optimizer, parts=5)
    pieces = [piece for _, ps in optimizer._flat.values() for piece in ps if piece.kind == "weight"]
    assert any(len(p.shape) == 1 for p in pieces)  # a partial row
    assert any(len(p.shape) == 2 and p.groups == 1 for p in pieces)  # whole rows of one group
    assert any(len(p.shape) == 3 for p in pieces)  # whole groups


def test_engine_copies_must_be_mapped_before_any_step():
    """The core knows no engine: even DeepSpeed's zero-gradient construction step over its
    copies is refused (the DeepSpeed binding keeps that step from reaching AdaAct)."""
    model = make_model("mlp")
    optimizer = AdaAct(model.parameters(), model=model)
    copies = [p.detach().clone().requires_grad_() for p in model.parameters()]
    optimizer.param_groups[0]["params"] = copies
    for c in copies:
        c.grad = torch.zeros_like(c)
    with pytest.raises(RuntimeError, match="deepspeed_initialize"):
        optimizer.step()
    assert not optimizer.state


def test_bad_fragments_name_the_problem():
    model = make_model("mlp")
    optimizer = AdaAct(model.parameters(), model=model)
    weight = model.embed.weight
    flat = torch.zeros(10, dtype=weight.dtype)
    with pytest.raises(ValueError, match="runs past the end"):
        optimizer.map_flat_tensor(flat, [Fragment(weight, 0, 5, 6)])
    with pytest.raises(ValueError, match="overlap"):
        optimizer.map_flat_tensor(flat, [Fragment(weight, 0, 0, 4), Fragment(weight, 4, 3, 2)])
    with pytest.raises(ValueError, match="was not given"):
        optimizer.map_flat_tensor(flat, [Fragment(nn.Linear(2, 2).weight, 0, 0, 4)])
