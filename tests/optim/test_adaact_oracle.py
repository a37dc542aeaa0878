"""AdaAct against the float64 oracle of ALGORITHM.md."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaact_dist import AdaAct
from tests.optim.models import GroupedCNN, TokenMLP
from tests.optim.oracle import OracleAdaAct

BETAS, EPS = (0.9, 0.99), 1e-8


def two_groups(model, lrs=(0.05, 0.02), decays=(0.1, 0.0)):
    """Matrices in one group, 1-D parameters in another, each with its own lr and decay."""
    matrices = [p for p in model.parameters() if p.dim() > 1]
    vectors = [p for p in model.parameters() if p.dim() <= 1]
    return [
        {"params": matrices, "lr": lrs[0], "weight_decay": decays[0]},
        {"params": vectors, "lr": lrs[1], "weight_decay": decays[1]},
    ]


def batches(model_name, steps, batch=4, seed=0, device="cpu"):
    """The same float64 batches on every device (drawn on the CPU, then moved)."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        if model_name == "mlp":
            x = torch.randn(batch, 5, 6, generator=gen, dtype=torch.float64)
            y = torch.randint(0, 3, (batch,), generator=gen)
        else:
            x = torch.randn(batch, 3, 11, 9, generator=gen, dtype=torch.float64)
            y = torch.randint(0, 5, (batch,), generator=gen)
        yield x.to(device), y.to(device)


def make_model(name, seed=0, device="cpu"):
    torch.manual_seed(seed)
    return (TokenMLP() if name == "mlp" else GroupedCNN()).double().to(device)


def max_relative_error(a, b):
    return max(((p - q).norm() / q.norm()).item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_matches_float64_oracle_over_five_steps(name, foreach, device):
    model = make_model(name, device=device)
    reference = copy.deepcopy(model)
    optimizer = AdaAct(two_groups(model), model=model, betas=BETAS, eps=EPS, foreach=foreach)
    oracle = OracleAdaAct(reference, two_groups(reference), BETAS, EPS)
    for x, y in batches(name, steps=5, device=device):
        for net in (model, reference):
            F.cross_entropy(net(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        oracle.step()
        for p in reference.parameters():
            p.grad = None
    assert max_relative_error(model, reference) < 1e-5
    # and the run moved the weights, so the comparison means something
    assert max_relative_error(model, make_model(name, device=device)) > 1e-3


@pytest.mark.parametrize(
    "dtype, tolerance",
    # fp32 differs from the oracle by rounding only (TF32 off; 4e-7 measured on CPU); bf16
    # autocast rounds every activation and gradient to 8 bits (1.7e-2 measured on CPU).
    [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)],
    ids=["float32", "bf16-autocast"],
)
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_low_precision_steps_follow_the_float64_oracle(name, dtype, tolerance, device):
    """The training precisions: fp32 weights, forward in fp32 or under bf16 autocast (whose
    activations the statistics sum in float32)."""
    reference = make_model(name, device=device)
    model = copy.deepcopy(reference).float()
    optimizer = AdaAct(two_groups(model), model=model, betas=BETAS, eps=EPS)
    oracle = OracleAdaAct(reference, two_groups(reference), BETAS, EPS)
    bf16 = dtype == torch.bfloat16
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        for x, y in batches(name, steps=5, device=device):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                output = model(x.float())
            F.cross_entropy(output.float(), y).backward()
            F.cross_entropy(reference(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            oracle.step()
            for p in reference.parameters():
                p.grad = None
    assert max_relative_error(model.double(), reference) < tolerance
    assert max_relative_error(reference, make_model(name, device=device)) > 1e-3


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_foreach_and_loop_paths_agree(device, memory_format):
    """Also for channels_last weights, whose rows the foreach path's dense D must follow."""
    runs = []
    for foreach in (False, True):
        model = make_model("cnn", device=device).to(memory_format=memory_format)
        optimizer = AdaAct(
            two_groups(model), model=model, foreach=foreach, other_rule="sgd_momentum"
        )
        for x, y in batches("cnn", steps=4, device=device):
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
        runs.append(model)
    assert max_relative_error(*runs) < 1e-12


def test_foreach_steps_a_weight_stored_transposed_like_the_loop():
    """Its rows are not contiguous in memory: the foreach path's dense D is then contiguous,
    which costs that tensor the multi-tensor fast route, not exactness."""
    runs = []
    for foreach in (False, True):
        model = make_model("mlp")
        model.embed.weight = nn.Parameter(model.embed.weight.detach().t().contiguous().t())
        optimizer = AdaAct(two_groups(model), model=model, foreach=foreach)
        for x, y in batches("mlp", steps=3):
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
        runs.append(model)
    assert runs[1].embed.weight.stride() == (1, 10)
    assert max_relative_error(*runs) < 1e-12


def test_foreach_lists_follow_changes_between_steps():
    """A gradient missing for a step, a state loaded mid-run, ``D`` refreshed every other
    step: the foreach path keeps its lists between steps and must follow all three."""
    runs = []
    for foreach in (False, True):
        model = make_model("cnn")
        optimizer = AdaAct(two_groups(model), model=model, foreach=foreach, stats_sync_every=2)
        for step, (x, y) in enumerate(batches("cnn", steps=6)):
            if step == 3:
                optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
            F.cross_entropy(model(x), y).backward()
            if step == 2:
                model.head.bias.grad = None
                model.features[0].weight.grad = None
            optimizer.step()
            optimizer.zero_grad()
        runs.append(model)
    assert max_relative_error(*runs) < 1e-12


def test_accumulation_of_two_half_batches_equals_one_full_batch():
    full, accumulated = GroupedCNN(batchnorm=False).double(), None
    accumulated = copy.deepcopy(full)
    opt_full = AdaAct(full.parameters(), model=full, lr=0.05, weight_decay=0.01)
    opt_acc = AdaAct(accumulated.parameters(), model=accumulated, lr=0.05, weight_decay=0.01)
    for x, y in batches("cnn", steps=3, batch=8):
        F.cross_entropy(full(x), y).backward()
        for half in (slice(0, 4), slice(4, 8)):
            (F.cross_entropy(accumulated(x[half]), y[half]) / 2).backward()
        opt_full.step()
        opt_acc.step()
        opt_full.zero_grad()
        opt_acc.zero_grad()
    assert max_relative_error(accumulated, full) < 1e-10


def test_statistics_only_from_training_forwards_with_grad():
    model = make_model("mlp")
    optimizer = AdaAct(model.parameters(), model=model)
    x, y = next(batches("mlp", 1))
    model.eval()
    model(x)
    model.train()
    with torch.no_grad():
        model(x)
    assert all(layer.pending_count == 0 for layer in optimizer.layers)
    F.cross_entropy(model(x), y).backward()
    counts = {layer.name: layer.pending_count for layer in optimizer.layers}
    # the shared layer saw two calls of 4 x 5 tokens each
    assert counts == {"embed": 20, "shared": 40, "head": 4}


def test_remove_hooks_stops_collection():
    model = make_model("mlp")
    optimizer = AdaAct(model.parameters(), model=model)
    optimizer.remove_hooks()
    model(next(batches("mlp", 1))[0])
    assert all(layer.pending_count == 0 for layer in optimizer.layers)
