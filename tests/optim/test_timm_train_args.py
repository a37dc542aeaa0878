"""AdaAct built the way timm's train.py builds its optimizer, and the timm_train entry point.

train.py calls ``create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)``
after it has set ``args.lr``; ``train_py_args`` parses a command line with the optimizer
options of timm's train.py and their defaults there (train.py is a script, not part of the
timm package, so the options are restated here).
"""

from __future__ import annotations

import argparse
import copy
import sys
import textwrap

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.optim._optim_factory import default_registry
from timm.scheduler import create_scheduler_v2
from timm.utils import ParseKwargs

import adaact_dist
from adaact_dist import AdaAct
from adaact_dist.timm_train import main as timm_train_main
from tests.optim.test_adaact_oracle import max_relative_error


def train_py_args(*argv: str, lr: float = 0.05) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--opt", default="sgd", type=str)
    parser.add_argument("--opt-eps", default=None, type=float)
    parser.add_argument("--opt-betas", default=None, type=float, nargs="+")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=2e-5)
    parser.add_argument("--layer-decay", type=float, default=None)
    parser.add_argument("--layer-decay-min-scale", type=float, default=0)
    parser.add_argument("--layer-decay-no-opt-scale", type=float, default=None)
    parser.add_argument("--opt-kwargs", nargs="*", default={}, action=ParseKwargs)
    parser.add_argument("--lr", type=float, default=None)
    args = parser.parse_args(["--opt", "adaact", *argv])
    args.lr = args.lr or lr  # train.py computes it from --lr-base when not given
    return args


def build(model, args):
    return create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)


def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=5
    )


def steps(model, optimizer, n=3):
    gen = torch.Generator().manual_seed(0)
    for _ in range(n):
        x = torch.randn(4, 3, 32, 32, generator=gen)
        y = torch.randint(0, 5, (4,), generator=gen)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("compiled", [False, True])
def test_train_py_defaults_build_adaact_eager_and_compiled(compiled):
    args = train_py_args()
    model = tiny_vit()
    reference = copy.deepcopy(model)
    optimizer = build(model, args)
    assert isinstance(optimizer, AdaAct)
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["eps"] == 1e-8
    assert sorted({g["weight_decay"] for g in optimizer.param_groups}) == [0.0, 2e-5]
    expected = adaact_dist.create_optimizer(reference, lr=args.lr, weight_decay=2e-5)
    assert [layer.name for layer in optimizer.layers] == [layer.name for layer in expected.layers]
    trained = torch.compile(model, backend="aot_eager") if compiled else model  # as train.py
    steps(trained, optimizer)
    steps(reference, expected)
    if compiled:
        assert max_relative_error(model, reference) < 1e-5
    else:
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))


def test_betas_eps_momentum_and_opt_kwargs_reach_adaact():
    model = tiny_vit()
    optimizer = build(
        model,
        train_py_args(
            "--opt-betas", "0.8", "0.99", "--opt-eps", "1e-6", "--opt-kwargs",
            "stats_sync_every=3", "other_rule=sgd_momentum", "other_momentum=0.5",
        ),
    )  # fmt: skip
    assert optimizer.defaults["betas"] == (0.8, 0.99) and optimizer.defaults["eps"] == 1e-6
    assert (optimizer.stats_sync_every, optimizer.other_rule) == (3, "sgd_momentum")
    assert optimizer.other_momentum == 0.5
    optimizer.remove_hooks()
    optimizer = build(model, train_py_args("--momentum", "0.95"))
    assert optimizer.defaults["betas"] == (0.95, 0.999)  # AdaAct's momentum is beta1
    optimizer.remove_hooks()


@pytest.mark.parametrize(
    ("argv", "error", "message"),
    [
        (("--momentum", "0.5", "--opt-betas", "0.8", "0.99"), ValueError, "momentum=0.5"),
        (("--opt-kwargs", "nesterov=True"), TypeError, "does not take 'nesterov'"),
        (("--opt-betas", "0.9"), ValueError, r"Invalid betas=\(0.9,\)"),
    ],
)
def test_arguments_adaact_cannot_honour_are_errors(argv, error, message):
    with pytest.raises(error, match=message):
        build(tiny_vit(), train_py_args(*argv))


def test_a_fallback_optimizer_request_is_an_error():
    with pytest.raises(ValueError, match="fallback"):
        create_optimizer_v2(tiny_vit(), "adaact", lr=0.1, fallback_list=["head*"])


def test_layer_decay_groups_get_their_lr_from_timms_scheduler():
    args = train_py_args("--layer-decay", "0.5", "--layer-decay-no-opt-scale", "0.2")
    model = tiny_vit()
    optimizer = build(model, args)
    create_scheduler_v2(optimizer, "cosine", num_epochs=2)
    scales = sorted({group["lr_scale"] for group in optimizer.param_groups})
    assert scales == [0.25, 0.5, 1.0]  # the patch embedding's 0.125 is below no-opt-scale
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(args.lr * group["lr_scale"])
    names = [layer.name for layer in optimizer.layers]
    assert "patch_embed.proj" not in names and "blocks.0.attn.qkv" in names
    steps(model, optimizer, n=1)


def test_timm_train_runs_a_script_as_main_with_adaact_registered(tmp_path, monkeypatch, capsys):
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import timm
            from timm.optim import create_optimizer_v2

            if __name__ == "__main__":
                model = timm.create_model("resnet10t", num_classes=3)
                optimizer = create_optimizer_v2(model, sys.argv[2], lr=float(sys.argv[4]))
                print(sys.argv[0], type(optimizer).__name__, optimizer.defaults["lr"])
            """
        )
    )
    monkeypatch.setattr(sys, "argv", ["timm_train"])
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(default_registry._optimizers, "adaact")  # as in a fresh process
    timm_train_main([str(script), "--opt", "adaact", "--lr", "0.25"])
    assert capsys.readouterr().out.split() == [str(script), "AdaAct", "0.25"]


def test_timm_train_names_a_missing_script():
    with pytest.raises(SystemExit, match="'no/such/train.py' is not a file"):
        timm_train_main(["no/such/train.py", "--opt", "adaact"])
