"""Layers whose weights the model passes to F.linear / F.conv2d without calling the module."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import _get_current_function_mode_stack

from adaact_dist import AdaAct

BETA2 = 0.99


class Attention(nn.Module):
    """Like timm's BEiT attention: ``qkv`` is never called, its weight goes to ``F.linear``."""

    def __init__(self, dim: int):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(3 * dim))
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.detach())
        qkv = F.linear(input=x, weight=self.qkv.weight, bias=self.q_bias)
        return qkv.unflatten(-1, (3, -1)).sum(-2)


class DirectCalls(nn.Module):
    """A functional Linear in a submodule, a functional strided Conv2d in the root, a shared
    weight used both ways in one forward, and plain module calls."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 6, 3, bias=False)  # used as F.conv2d(stride=2, padding=1)
        self.attn = Attention(6)
        self.shared = nn.Linear(6, 6)  # called once as a module, once through F.linear
        self.head = nn.Linear(6, 3)
        self.down_inputs: list[torch.Tensor] = []
        self.shared_inputs: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.tanh(self.stem(x))
        self.down_inputs.append(h.detach())
        h = F.conv2d(h, self.down.weight, None, 2, 1)
        tokens = self.attn(h.flatten(2).transpose(1, 2))  # (N, L, 6), a transposed view
        self.shared_inputs.append(tokens.detach())
        tokens = torch.tanh(self.shared(tokens))
        self.shared_inputs.append(tokens.detach())
        tokens = F.linear(tokens, self.shared.weight, self.shared.bias)
        return self.head(tokens.mean(1))


def mean_squares(samples: list[torch.Tensor]) -> torch.Tensor:
    a = torch.cat(samples)
    return (a * a).mean(0)


def expected_statistics(model: DirectCalls) -> dict[str, torch.Tensor]:
    """The mean of ``a**2`` per feature each layer should have seen, by explicit im2col."""
    patches = [
        F.unfold(x, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 36)
        for x in model.down_inputs
    ]
    return {
        "down": mean_squares(patches),
        "attn.qkv": mean_squares([x.reshape(-1, 6) for x in model.attn.inputs]),
        "shared": mean_squares([x.reshape(-1, 6) for x in model.shared_inputs]),
    }


def test_direct_calls_give_the_statistics_of_their_inputs():
    torch.manual_seed(0)
    model = DirectCalls().double()
    optimizer = AdaAct(model.parameters(), model=model, betas=(0.9, BETA2))
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    F.cross_entropy(model(x), torch.tensor([0, 2])).backward()
    optimizer.step()
    assert optimizer.functional_layers == ["down", "attn.qkv", "shared"]
    moments = optimizer.activation_second_moments()
    for name, expected in expected_statistics(model).items():
        measured = moments[name].reshape(-1) / (1 - BETA2)
        torch.testing.assert_close(measured, expected, rtol=1e-10, atol=0, msg=name)


def test_after_discovery_the_mode_runs_only_in_the_calling_modules():
    torch.manual_seed(0)
    model = DirectCalls()
    optimizer = AdaAct(model.parameters(), model=model)
    depth_in_head, depth_in_attn = [], []

    def record(into):
        return lambda module, args: into.append(len(_get_current_function_mode_stack()))

    model.head.register_forward_pre_hook(record(depth_in_head))
    model.attn.qkv.register_forward_pre_hook(record([]))
    model.attn.register_forward_hook(
        lambda m, a, out: depth_in_attn.append(len(_get_current_function_mode_stack()))
    )
    x = torch.randn(2, 3, 9, 9)
    for _ in range(3):
        optimizer.zero_grad()
        model(x).sum().backward()
        optimizer.step()
        model.down_inputs.clear()
    # The root is a scope here (its forward calls F.conv2d and F.linear itself), so the mode
    # covers the head too; inside attn it is active, and nothing is left on the stack after.
    assert depth_in_head == [1, 1, 1] and depth_in_attn == [1, 1, 1]
    assert _get_current_function_mode_stack() == []
    assert [layer.step for layer in optimizer.layers] == [3] * len(optimizer.layers)


class ScopedOnly(nn.Module):
    """The direct call sits in a submodule: after discovery nothing else runs under the mode."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.attn = Attention(6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.attn(self.embed(x)).mean(1))


def test_the_mode_stays_out_of_modules_that_need_none():
    model = ScopedOnly()
    optimizer = AdaAct(model.parameters(), model=model)
    depths = []
    model.head.register_forward_pre_hook(
        lambda m, a: depths.append(len(_get_current_function_mode_stack()))
    )
    x = torch.randn(2, 5, 4)
    with torch.no_grad():  # neither an evaluation forward ...
        model(x)
    model.eval()
    model(x).sum().backward()  # ... nor one in eval mode starts the discovery
    optimizer.zero_grad()
    model.train()
    for _ in range(2):
        model(x).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert depths == [0, 0, 1, 0]  # only the first training forward ran entirely under it
    assert optimizer.functional_layers == ["attn.qkv"]


def test_remove_hooks_also_stops_direct_call_capture():
    model = ScopedOnly()
    optimizer = AdaAct(model.parameters(), model=model)
    x = torch.randn(2, 5, 4)
    model(x).sum().backward()
    optimizer.step()
    optimizer.remove_hooks()
    model(x)
    assert all(layer.pending_count == 0 for layer in optimizer.layers)
    assert _get_current_function_mode_stack() == []


def test_a_weight_used_another_way_is_named_in_the_error():
    class MatmulHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.body(x) @ self.head.weight.T

    model = MatmulHead()
    optimizer = AdaAct(model.parameters(), model=model)
    model(torch.randn(3, 4)).sum().backward()
    with pytest.raises(RuntimeError, match=r"\['head'\].*x @ weight\.T.*another optimizer"):
        optimizer.step()
