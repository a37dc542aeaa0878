"""The foreach step issues a fixed number of ops, whatever the number of layers.

On a GPU a multi-tensor (``torch._foreach_*``) op is one kernel launch per chunk of elements
when every tensor of its lists is dense and has the strides of its partners, and one launch
per tensor otherwise. CPUs run these ops as loops over the tensors, so the tests count what
``step()`` dispatches itself (the profiler's direct children of the step) and check the
conditions of that fast route on every multi-tensor op the step makes.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from adaact_dist import AdaAct
from tests.optim.test_adaact_oracle import two_groups
from tests.optim.test_fragments import shard, step_sharded


class Tower(nn.Module):
    """A grouped convolution, then ``depth`` blocks of Linear and LayerNorm."""

    def __init__(self, depth: int):
        super().__init__()
        self.stem = nn.Conv2d(4, 8, 3, groups=2)
        blocks = [nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Tanh()) for _ in range(depth)]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(8, 3, bias=False)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x).mean(dim=(2, 3))))


LAYOUTS = ["parameters", "channels_last", "flat_slices"]


def train_steps(depth: int, layout: str, steps: int, last_step_context) -> None:
    """``steps`` training steps of a ``Tower(depth)`` with foreach AdaAct, the last one run
    inside ``last_step_context``; the ``"flat_slices"`` layout steps ZeRO-like flat slices
    of the parameters (cutting rows) instead of the parameters."""
    torch.manual_seed(0)
    model = Tower(depth)
    if layout == "channels_last":
        model.to(memory_format=torch.channels_last)
    optimizer = AdaAct(two_groups(model), model=model, foreach=True, other_rule="sgd_momentum")
    sharded = layout == "flat_slices"
    shards = shard(optimizer, parts=2) if sharded else None
    generator = torch.Generator().manual_seed(0)
    for step in range(steps):
        x = torch.randn(4, 4, 6, 6, generator=generator)
        y = torch.randint(0, 3, (4,), generator=generator)
        F.cross_entropy(model(x), y).backward()
        with last_step_context() if step == steps - 1 else contextlib.nullcontext():
            if sharded:
                step_sharded(optimizer, shards, group_by_group=False)
            else:
                optimizer.step()
        optimizer.zero_grad()
        model.zero_grad()


def ops_in_one_step(depth: int, layout: str) -> list[str]:
    """The ops that one ``step()`` dispatches itself, after two warm-up steps."""
    profiles = []

    def profiled():
        profiles.append(profile(activities=[ProfilerActivity.CPU]))
        return profiles[-1]

    train_steps(depth, layout, steps=3, last_step_context=profiled)
    events = profiles[0].events()
    steps = [e for e in events if e.name.startswith("Optimizer.step#")]
    assert len(steps) == 1
    return sorted(e.name for e in events if e.cpu_parent is steps[0])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_step_ops_do_not_grow_with_the_number_of_layers(layout):
    shallow, deep = ops_in_one_step(4, layout), ops_in_one_step(8, layout)
    extra = Counter(deep) - Counter(shallow)
    assert len(deep) == len(shallow), (
        f"{len(shallow)} ops with 4 blocks, {len(deep)} with 8: {extra}"
    )


class _ForeachCalls(TorchDispatchMode):
    """Records the tensor-list arguments of every multi-tensor op dispatched."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, list[list[torch.Tensor]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        if "_foreach_" in name:
            lists = [
                a for a in args if isinstance(a, (list, tuple)) and a and torch.is_tensor(a[0])
            ]
            self.calls.append((name, lists))
        return func(*args, **(kwargs or {}))


def is_dense(tensor: torch.Tensor) -> bool:
    """No gaps, no overlaps: a new tensor like it keeps its strides (as torch checks it)."""
    return torch.empty_like(tensor).stride() == tensor.stride()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_multi_tensor_ops_get_dense_tensors_with_matching_strides(layout):
    recorder = _ForeachCalls()
    train_steps(6, layout, steps=3, last_step_context=lambda: recorder)
    assert any("addcmul" in name for name, _ in recorder.calls)
    for name, lists in recorder.calls:
        for position, partners in enumerate(zip(*lists)):
            first = partners[0]
            for tensor in partners:
                described = f"{name}, tensor {position}: shape {tuple(tensor.shape)}"
                assert is_dense(tensor), f"{described} is not dense"
                assert tensor.shape == first.shape and tensor.stride() == first.stride(), (
                    f"{described}, strides {tensor.stride()} against {first.stride()}"
                )
                assert tensor.dtype == first.dtype and tensor.device == first.device
