"""AdaAct(params) without ``model=``: it finds the layers itself and behaves as with ``model=``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaact_dist import AdaAct
from adaact_dist.optim import _discovery
from tests.optim.test_adaact_oracle import batches, make_model, max_relative_error, two_groups
from tests.optim.test_direct_calls import DirectCalls


def train(model, optimizer, name, steps=4):
    for x, y in batches(name, steps):
        F.cross_entropy(model(x.to(next(model.parameters()).dtype)), y).backward()
        optimizer.step()
        optimizer.zero_grad()


def assert_same_state(a: dict, b: dict) -> None:
    """Two optimizer state dicts hold the same keys and exactly the same values."""
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same_state(a[key], b[key])
        elif torch.is_tensor(a[key]):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_without_model_equals_with_model(name):
    with_model = make_model(name)
    without = copy.deepcopy(with_model)
    kwargs = dict(betas=(0.9, 0.99), stats_sync_every=2, other_rule="sgd_momentum")
    optimizer = AdaAct(two_groups(with_model), model=with_model, **kwargs)
    found = AdaAct(two_groups(without), **kwargs)
    assert [layer.name for layer in found.layers] == [layer.name for layer in optimizer.layers]
    train(with_model, optimizer, name)
    train(without, found, name)
    for p, q in zip(with_model.parameters(), without.parameters()):
        assert torch.equal(p, q)
    assert_same_state(optimizer.state_dict(), found.state_dict())


def test_state_dicts_load_across_the_two_ways():
    source = make_model("cnn")
    optimizer = AdaAct(source.parameters(), model=source, stats_sync_every=3)
    train(source, optimizer, "cnn", steps=2)
    resumed = make_model("cnn")
    resumed.load_state_dict(source.state_dict())
    found = AdaAct(resumed.parameters(), stats_sync_every=3)
    found.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # no shared tensors
    for model, opt in ((source, optimizer), (resumed, found)):
        for x, y in batches("cnn", 2, seed=1):
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(source.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


class Task(nn.Module):
    """What holds the model in timm's train.py (its training task) or in a Lightning module."""

    def __init__(self, model):
        super().__init__()
        self.trainable_module = model
        self.criterion = nn.CrossEntropyLoss()


def test_layers_are_named_in_the_model_whatever_holds_or_wraps_it():
    model = make_model("cnn")
    expected = [layer.name for layer in AdaAct(model.parameters(), model=model).layers]
    task = Task(model)  # noqa: F841 (alive while AdaAct looks for the model)
    compiled = torch.compile(model, backend="aot_eager")
    for params in (model.parameters(), compiled.parameters()):
        assert [layer.name for layer in AdaAct(params).layers] == expected
    head_only = AdaAct(model.head.parameters())
    assert [layer.name for layer in head_only.layers] == ["head"]


def test_compiled_after_the_optimizer_is_built_collects_the_same_statistics():
    """timm's train.py builds the optimizer, then compiles the model."""
    eager = make_model("cnn").float()
    source = copy.deepcopy(eager)
    opt_eager = AdaAct(eager.parameters(), model=eager, lr=0.05)
    opt_found = AdaAct(source.parameters(), lr=0.05)
    compiled = torch.compile(source, backend="aot_eager")
    for x, y in batches("cnn", steps=3):
        for model, optimizer in ((eager, opt_eager), (compiled, opt_found)):
            F.cross_entropy(model(x.float()), y).backward()
            optimizer.step()
            optimizer.zero_grad()
    assert max_relative_error(source, eager) < 1e-5


def test_weights_used_without_their_module_are_read_without_model():
    torch.manual_seed(0)
    with_model = DirectCalls().double()
    without = copy.deepcopy(with_model)
    optimizer = AdaAct(with_model.parameters(), model=with_model)
    found = AdaAct(without.parameters())
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    for model, opt in ((with_model, optimizer), (without, found)):
        F.cross_entropy(model(x), torch.tensor([0, 2])).backward()
        opt.step()
    assert found.functional_layers == optimizer.functional_layers == ["down", "attn.qkv", "shared"]
    for p, q in zip(with_model.parameters(), without.parameters()):
        assert torch.equal(p, q)


def test_the_layers_are_found_once_not_per_step(monkeypatch):
    model = make_model("mlp")
    calls = []
    find_model = _discovery.find_model
    monkeypatch.setattr(
        "adaact_dist.optim._adaact.find_model", lambda groups: calls.append(1) or find_model(groups)
    )
    optimizer = AdaAct(model.parameters())
    train(model, optimizer, "mlp", steps=3)
    optimizer.load_state_dict(optimizer.state_dict())
    assert len(calls) == 1


def test_a_parameter_no_module_holds_is_named_in_the_error():
    model = make_model("mlp")
    loose = nn.Parameter(torch.zeros(4, 2))
    groups = [{"params": list(model.parameters())}, {"params": [loose]}]
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['params'\]\[0\] \(shape \(4, 2\)\)"):
        AdaAct(groups)
    with pytest.raises(ValueError, match="no nn.Module holds it.*model="):
        AdaAct(groups)


def test_parameters_of_two_models_need_model():
    first, second = make_model("mlp"), make_model("cnn")
    with pytest.raises(ValueError, match="belongs to another model.*model="):
        AdaAct([*first.parameters(), *second.parameters()])


def test_one_weight_in_two_unrelated_modules_needs_model():
    first, second = nn.Linear(3, 3), nn.Linear(3, 3)
    second.weight, second.bias = first.weight, first.bias
    with pytest.raises(ValueError, match="2 different modules.*Linear.*model="):
        AdaAct(first.parameters())
    assert [layer.module for layer in AdaAct(first.parameters(), model=first).layers] == [first]


def test_tied_weights_are_refused_without_model_too():
    model = make_model("mlp")
    model.extra = nn.Linear(10, 10).double()
    model.extra.weight = model.shared.weight
    with pytest.raises(NotImplementedError, match="share one weight tensor"):
        AdaAct(model.parameters())
