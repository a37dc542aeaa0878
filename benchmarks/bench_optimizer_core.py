"""AdaAct core on CPU: hook overhead, step time and state size against SGD and AdamW.

    .venv/bin/python -m benchmarks.bench_optimizer_core --out benchmarks/optimizer_core.md

Every comparison is interleaved within one run (the machines are noisy) and reported
as the median of ``--repeats`` measurements. The "unfold" row reproduces how the
published AdaAct code takes convolution statistics (im2col patches), as the anchor.
A second table counts the profiler's events in one ``foreach=True`` step (deterministic,
unlike times) and gives that path's memory, which includes its dense copy of ``D``.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from adaact_dist import AdaAct
from adaact_dist._machine import cpu_name
from benchmarks.timing import interleaved_medians


def unfold_hooks(model: nn.Module) -> list:
    """Statistics the published way: im2col patches for every convolution."""

    def hook(module, args):
        x = args[0].detach()
        if isinstance(module, nn.Conv2d):
            patches = F.unfold(
                x, module.kernel_size, module.dilation, module.padding, module.stride
            )
            (patches**2).sum(dim=(0, 2))
        else:
            (x.reshape(-1, x.shape[-1]) ** 2).sum(0)

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return [m.register_forward_pre_hook(hook) for m in layers]


def seconds(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_forward_backward(model, x, repeats: int) -> dict[str, float]:
    """Median fwd+bwd seconds with no hooks, AdaAct's hooks (layers found without ``model=``,
    as timm's registry builds it, and with ``model=``), and unfold hooks, interleaved."""
    found = AdaAct(model.parameters())
    given = AdaAct(model.parameters(), model=model)
    for optimizer in (found, given):
        optimizer.remove_hooks()

    def run():
        model.zero_grad(set_to_none=True)
        model(x).float().mean().backward()

    def with_adaact(optimizer):
        def fn():
            optimizer._table.register_hooks()
            try:
                run()
            finally:
                optimizer._table.remove_hooks()
                optimizer._table.clear_pending()

        return fn

    def with_unfold():
        handles = unfold_hooks(model)
        try:
            run()
        finally:
            for handle in handles:
                handle.remove()

    variants = {
        "no hooks": run,
        "AdaAct hooks": with_adaact(found),
        "AdaAct hooks model=": with_adaact(given),
        "unfold hooks": with_unfold,
    }
    timed = {name: functools.partial(seconds, fn) for name, fn in variants.items()}
    return interleaved_medians(timed, repeats, warmup=1)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    total = sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if torch.is_tensor(t)
    )
    if isinstance(optimizer, AdaAct):
        table = optimizer._table
        total += sum(
            b.numel() * b.element_size()
            for b in (table.second_moment, table.precond, table.pending_sum)
        )
        total += sum(plan.nbytes for plan in optimizer._plans.values())  # the dense D
    return total


def step_ops(optimizer: AdaAct) -> tuple[int, int]:
    """Profiler events in one ``step()``: the ops it dispatches itself (on a GPU, a multi-tensor
    op over dense lists is one launch per chunk), and all ``aten::`` events (on CPU these also
    count each multi-tensor op's loop over its tensors)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        optimizer.step()
    events = prof.events()
    (step,) = [e for e in events if e.name.startswith("Optimizer.step#")]
    dispatched = sum(e.cpu_parent is step for e in events)
    return dispatched, sum(e.name.startswith("aten::") for e in events)


def bench_step(model, x, repeats: int) -> tuple[dict[str, float], dict[str, int], tuple]:
    """Median ``optimizer.step()`` seconds and state bytes for AdaAct, SGD, AdamW (foreach),
    and the events of one AdaAct ``foreach=True`` step (:func:`step_ops`)."""

    def groups():
        return timm.optim.param_groups_weight_decay(model, weight_decay=1e-4)

    adaact = AdaAct(groups(), lr=1e-3)
    adaact_foreach = AdaAct(groups(), lr=1e-3, foreach=True)
    adaact_foreach.remove_hooks()
    sgd = torch.optim.SGD(groups(), lr=1e-3, momentum=0.9, foreach=True)
    adamw = torch.optim.AdamW(groups(), lr=1e-3, foreach=True)
    model.zero_grad(set_to_none=True)
    model(x).float().mean().backward()
    pending = adaact._table.pending_sum.clone()
    counts = [layer.pending_count for layer in adaact.layers]

    def restore_statistics(optimizer):
        optimizer._table.pending_sum.copy_(pending)
        for layer, count in zip(optimizer.layers, counts):
            layer.pending_count = count

    def adaact_step(optimizer):
        def fn():
            restore_statistics(optimizer)
            start = time.perf_counter()
            optimizer.step()
            return time.perf_counter() - start

        return fn

    def timed(optimizer):
        def fn():
            start = time.perf_counter()
            optimizer.step()
            return time.perf_counter() - start

        return fn

    variants = {
        "AdaAct": adaact_step(adaact),
        "AdaAct foreach": adaact_step(adaact_foreach),
        "SGD momentum": timed(sgd),
        "AdamW": timed(adamw),
    }
    with torch.no_grad():
        snapshot = [p.detach().clone() for p in model.parameters()]
    medians = interleaved_medians(variants, repeats, warmup=1)
    restore_statistics(adaact_foreach)
    ops = step_ops(adaact_foreach)
    with torch.no_grad():
        for p, saved in zip(model.parameters(), snapshot):
            p.copy_(saved)
    adaact.remove_hooks()
    sizes = {"AdaAct": state_bytes(adaact), "AdamW": state_bytes(adamw)}
    sizes["SGD momentum"] = state_bytes(sgd)
    sizes["AdaAct foreach"] = state_bytes(adaact_foreach)
    return medians, sizes, ops


def bench_build(model, repeats: int) -> dict[str, float]:
    """Median seconds to build AdaAct with ``model=`` and finding the model, interleaved.

    Finding it scans the objects Python's collector tracks: once per optimizer, never per step.
    """

    def build(**kwargs):
        def fn():
            start = time.perf_counter()
            optimizer = AdaAct(model.parameters(), **kwargs)
            elapsed = time.perf_counter() - start
            optimizer.remove_hooks()
            return elapsed

        return fn

    return interleaved_medians({"model=": build(model=model), "found": build()}, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--step-repeats", type=int, default=25)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=None, help="write the Markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lines = [
        f"Machine: {cpu_name()}, {args.threads} threads, torch {torch.__version__}, "
        f"batch {args.batch}, fp32, medians of {args.repeats} (fwd+bwd) / "
        f"{args.step_repeats} (step) interleaved repetitions.",
        "",
        "| model | fwd+bwd no hooks (s) | AdaAct hooks | hooks with model= | unfold hooks "
        "| step AdaAct (ms) "
        "| step foreach | step SGD-m | step AdamW | AdaAct/SGD | AdaAct/AdamW "
        "| state AdaAct/AdamW | build model= / found (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    op_lines = [
        "| model | step foreach: ops dispatched by step() | all aten:: events "
        "| state foreach/AdamW |",
        "|---|---|---|---|",
    ]
    for name, channels_last in (
        ("resnet50", False),
        ("resnet50", True),
        ("vit_small_patch16_224", False),
        ("convnext_nano", False),  # NHWC blocks inside: permuted conv inputs
    ):
        model = timm.create_model(name, num_classes=1000).train()
        x = torch.randn(args.batch, 3, 224, 224)
        if channels_last:  # the trainer's layout for CNNs: NHWC inputs
            x = x.to(memory_format=torch.channels_last)
            name += " (channels_last input)"
        fb = bench_forward_backward(model, x, args.repeats)
        step, sizes, (dispatched, events) = bench_step(model, x, args.step_repeats)
        builds = bench_build(model, args.repeats)
        base = fb["no hooks"]
        row = (
            f"| {name} | {base:.3f} | {fb['AdaAct hooks'] / base:.3f}x "
            f"| {fb['AdaAct hooks model='] / base:.3f}x "
            f"| {fb['unfold hooks'] / base:.3f}x | {step['AdaAct'] * 1e3:.1f} "
            f"| {step['AdaAct foreach'] * 1e3:.1f} "
            f"| {step['SGD momentum'] * 1e3:.1f} | {step['AdamW'] * 1e3:.1f} "
            f"| {step['AdaAct'] / step['SGD momentum']:.2f}x "
            f"| {step['AdaAct'] / step['AdamW']:.2f}x "
            f"| {sizes['AdaAct'] / sizes['AdamW']:.3f}x "
            f"({sizes['AdaAct'] / 2**20:.1f} / {sizes['AdamW'] / 2**20:.1f} MiB) "
            f"| {builds['model='] * 1e3:.0f} / {builds['found'] * 1e3:.0f} |"
        )
        print(row, flush=True)
        lines.append(row)
        foreach_state = sizes["AdaAct foreach"]
        op_lines.append(
            f"| {name} | {dispatched} | {events} | {foreach_state / sizes['AdamW']:.3f}x "
            f"({foreach_state / 2**20:.1f} / {sizes['AdamW'] / 2**20:.1f} MiB) |"
        )
    text = "\n".join([*lines, "", *op_lines]) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
