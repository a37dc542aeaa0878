"""One AdaAct step on timm's model zoo, in both memory formats: which models train.

    .venv/bin/python benchmarks/sweep_timm_models.py --out benchmarks/timm_models.md

For each model: ``timm.create_model`` (random weights), a batch of 2 at the model's
default input size, forward, backward and ``AdaAct(model.parameters(), model=model)``
``.step()``, once with contiguous tensors and once with the model and its input in
channels_last. A row records ``ok`` or the error's first line, how many layers AdaAct
preconditions and how many of them it reads through direct ``F.linear``/``F.conv2d``
calls (weights a module's parent uses without calling the module). Not a test: the
test suite's model zoo (``tests/optim/test_timm_models.py``) checks the statistics
themselves on small versions of these families.
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

from adaact_dist import AdaAct
from adaact_dist._machine import cpu_name

# The table (issue 12), family by family.
MODELS = [
    "resnet50", "resnet101", "efficientnet_b0", "regnety_008", "mobilenetv3_small_100",
    "resnext26ts", "densenet121", "levit_128s", "coatnet_nano_rw_224", "maxvit_nano_rw_256",
    "nfnet_l0", "poolformer_s12", "efficientvit_b0", "ghostnet_100", "hrnet_w18_small",
    "dla34", "cspresnet50", "xception41", "seresnext26d_32x4d",
    "deit_small_patch16_224", "vit_tiny_patch16_224", "vit_small_patch16_224",
    "swin_tiny_patch4_window7_224", "mixer_b16_224", "convmixer_768_32", "inception_v3",
    "convnext_nano", "convnextv2_nano", "edgenext_xx_small",
    "beit_base_patch16_224", "eva02_tiny_patch14_224",
]  # fmt: skip


def one_step(name: str, channels_last: bool) -> tuple[str, int, int]:
    """Run one step; return the outcome, the preconditioned and the captured layer counts."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).train()
    size = model.pretrained_cfg["input_size"]
    x = torch.randn(2, *size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    optimizer = AdaAct(model.parameters(), model=model, lr=0.1)
    try:
        model(x).float().mean().backward()
        optimizer.step()
    except Exception as error:  # the sweep records failures, it does not stop on them
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"{type(error).__name__}: {first[:110]}", len(optimizer.layers), 0
    captured = len(optimizer.functional_layers)
    return "ok", len(optimizer.layers), captured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names")
    parser.add_argument("--out", default=None, help="write the Markdown table here")
    args = parser.parse_args()
    lines = [
        "# One AdaAct step on timm models, in both memory formats",
        "",
        "Command: `.venv/bin/python benchmarks/sweep_timm_models.py --out "
        "benchmarks/timm_models.md`",
        "",
        f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"timm {timm.__version__}; batch 2 at each model's default input size, fp32, CPU.",
        "",
        "| model | contiguous | channels_last | preconditioned layers | read from direct calls |",
        "|---|---|---|---|---|",
    ]
    failures = 0
    started = time.perf_counter()
    for name in args.models.split(","):
        plain, layers, captured = one_step(name, channels_last=False)
        nhwc, _, _ = one_step(name, channels_last=True)
        failures += (plain != "ok") + (nhwc != "ok")
        row = f"| {name} | {plain} | {nhwc} | {layers} | {captured} |"
        print(row, flush=True)
        lines.append(row)
    lines += ["", f"{failures} failure(s); {time.perf_counter() - started:.0f} s in all."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
