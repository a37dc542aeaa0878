"""Checkpoint round trips and the clear errors AdaAct promises."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaact_dist import AdaAct
from tests.optim.models import GroupedCNN, TokenMLP
from tests.optim.test_adaact_oracle import batches, max_relative_error


def train(model, optimizer, data):
    for x, y in data:
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("sync_every", [1, 3])
def test_state_dict_round_trip_continues_exactly(sync_every):
    torch.manual_seed(0)
    model = GroupedCNN().double()
    resumed_model = copy.deepcopy(model)
    kwargs = dict(lr=0.05, weight_decay=0.01, stats_sync_every=sync_every)
    kwargs["other_rule"] = "sgd_momentum"
    optimizer = AdaAct(model.parameters(), model=model, **kwargs)
    data = list(batches("cnn", steps=7))
    train(model, optimizer, data[:4])

    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_model.load_state_dict(saved["model"])
    resumed = AdaAct(resumed_model.parameters(), model=resumed_model, **kwargs)
    resumed.load_state_dict(saved["optim"])

    train(model, optimizer, data[4:])
    train(resumed_model, resumed, data[4:])
    assert max_relative_error(resumed_model, model) == 0.0
    for a, b in zip(resumed.layers, optimizer.layers):
        assert torch.equal(a.second_moment, b.second_moment) and a.step == b.step


def test_state_dict_is_keyed_by_module_path():
    model = TokenMLP()
    optimizer = AdaAct(model.parameters(), model=model)
    x, y = next(batches("mlp", 1))
    F.cross_entropy(model(x.float()), y).backward()
    optimizer.step()
    state = optimizer.state_dict()
    stats = state["adaact_activation_stats"]["layers"]
    assert list(stats) == ["embed", "shared", "head"]
    assert stats["shared"]["exp_avg_sq"].shape == (10,)
    weight_state = state["state"][list(model.parameters()).index(model.embed.weight)]
    assert set(weight_state) == {"exp_avg", "step"}


def test_loading_into_another_architecture_names_the_layers():
    model, other = TokenMLP(), TokenMLP(hidden=12)
    state = AdaAct(model.parameters(), model=model).state_dict()
    with pytest.raises(ValueError, match="features"):
        AdaAct(other.parameters(), model=other).load_state_dict(state)
    state.pop("adaact_activation_stats")
    with pytest.raises(ValueError, match="no AdaAct activation statistics"):
        AdaAct(model.parameters(), model=model).load_state_dict(state)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1.0), "Invalid lr=-1.0"),
        (dict(weight_decay=-0.1), "Invalid weight_decay=-0.1"),
        (dict(betas=(0.9, 1.0)), r"Invalid betas=\(0.9, 1.0\)"),
        (dict(betas=(-0.1, 0.9)), "Invalid betas"),
        (dict(eps=0.0), "Invalid eps=0.0"),
        (dict(stats_sync_every=0), "Invalid stats_sync_every=0"),
        (dict(other_rule="adam"), "Invalid other_rule='adam'"),
    ],
)
def test_bad_hyperparameters(kwargs, message):
    model = TokenMLP()
    with pytest.raises(ValueError, match=message):
        AdaAct(model.parameters(), model=model, **kwargs)


def test_bad_group_hyperparameter_names_the_value():
    model = TokenMLP()
    groups = [{"params": model.parameters(), "lr": -0.5}]
    with pytest.raises(ValueError, match="Invalid lr=-0.5"):
        AdaAct(groups, model=model)


def test_model_without_supported_layers():
    model = nn.Sequential(nn.LayerNorm(4))
    with pytest.raises(ValueError, match="no nn.Linear or nn.Conv2d"):
        AdaAct(model.parameters(), model=model)
    linear_only_bias = TokenMLP()
    with pytest.raises(ValueError, match="no nn.Linear or nn.Conv2d"):
        AdaAct([linear_only_bias.norm.weight], model=linear_only_bias)


def test_parameters_not_in_the_model():
    model, stranger = TokenMLP(), nn.Linear(3, 3)
    with pytest.raises(ValueError, match="not parameters of `model`"):
        AdaAct([*model.parameters(), stranger.weight], model=model)
    with pytest.raises(TypeError, match="must be the nn.Module"):
        AdaAct(model.parameters(), model="model")


@pytest.mark.parametrize("mistake", ["eval", "no_grad", "zero_grad_after_forward"])
def test_step_without_training_forward_explains_the_fix(mistake):
    model = TokenMLP()
    optimizer = AdaAct(model.parameters(), model=model)
    x, y = next(batches("mlp", 1))
    x = x.float()
    if mistake == "eval":
        model.eval()
    loss = F.cross_entropy(model(x), y)
    if mistake == "no_grad":  # statistics from a forward under no_grad, gradients from elsewhere
        with torch.no_grad():
            model(x)
        optimizer.zero_grad()
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
    elif mistake == "zero_grad_after_forward":
        optimizer.zero_grad()
        loss.backward()
    else:
        loss.backward()
    with pytest.raises(RuntimeError, match="no activation statistics since the last step"):
        optimizer.step()


def test_tied_weights_across_modules_are_refused():
    model = TokenMLP()
    model.extra = nn.Linear(10, 10)
    model.extra.weight = model.shared.weight
    with pytest.raises(NotImplementedError, match="share one weight tensor"):
        AdaAct(model.parameters(), model=model)
