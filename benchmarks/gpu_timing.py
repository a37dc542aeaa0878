"""The timed parts of ``gpu_check.py``: loaders, training throughput, the optimizer core and
``torch.compile``, each interleaving what it compares in one run and reporting medians
(:func:`benchmarks.timing.interleaved_medians`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu_parts import (
    Context,
    ModelSpec,
    Outcome,
    Sizes,
    autocast,
    installed,
    precision,
    ratio,
    require,
    synchronize,
)
from benchmarks.timing import (
    TRAINER_OPTIMIZERS,
    Measure,
    TrainerRun,
    interleaved_medians,
    optimizer_overrides,
)

# -- 2. loaders ------------------------------------------------------------------------------
EVAL = {"is_training": False, "shuffle": False}  # the training shards, read the evaluation way


def part_loaders(ctx: Context) -> Outcome:
    """Images/s of the DALI pipeline ("mixed" decoding on the GPU) for training (A2) and
    evaluation, and of the webdataset loader with timm's A2 transforms on all cores, over the
    same photo shards; epochs interleaved, each timed from its first batch to its last."""
    require("skimage")  # the photos come from scikit-image's bundled samples
    from adaact_dist.data import LoaderConfig, create_loader
    from benchmarks.bench_data_loaders import prepare

    sizes, device = ctx.sizes, ctx.device
    _, shards = prepare(ctx.work, sizes.photos)
    cores = len(os.sched_getaffinity(0))
    threads = min(8, cores)
    decoding = "mixed" if device.type == "cuda" else "CPU"
    specs = {  # the webdataset loader first: it forks its workers before DALI starts threads
        "wds_train": ("webdataset + timm, train (A2)", "wds", cores, {}),
        "dali_train": (f"DALI {decoding}, train (A2)", "dali", threads, {}),
        "dali_eval": (f"DALI {decoding}, eval", "dali", threads, EVAL),
    }
    outcome, loaders = Outcome(), {}
    for key, (_, backend, workers, options) in specs.items():
        if backend == "dali" and not installed("nvidia.dali"):
            continue
        config = LoaderConfig(
            backend=backend,
            split="train",
            shards=shards,
            batch_size=sizes.loader_batch,
            num_workers=workers,
            device=device,
            **options,
        )
        loaders[key] = create_loader(config)
        epoch_rate(loaders[key], 0, device)  # warm-up: workers, pipeline, page cache
    epochs = {key: next_epochs(loader, device) for key, loader in loaders.items()}
    medians = interleaved_medians(epochs, sizes.loader_epochs)
    for key, (label, _, workers, _) in specs.items():
        row = {"loader": label, "threads or workers": workers}
        if key in loaders:
            outcome.metrics[key] = medians[key]
            row |= {"status": "ok", "images/s": outcome.metrics[key]}
        else:
            row["status"] = "skipped: nvidia.dali is not installed"
        outcome.rows.append(row)
    outcome.notes.append(
        f"{sizes.photos} photos (adaact_dist.data.photos) at 224 px, batch {sizes.loader_batch}, "
        f"{cores} cores; median of {sizes.loader_epochs} epochs, each loader measured alone (in "
        "training, DALI's GPU work shares the GPU with the model)."
    )
    return outcome


def next_epochs(loader, device: torch.device) -> Measure:
    """Images/s of the loader's epochs 1, 2, ..., one per call."""
    epochs = itertools.count(1)
    return lambda: epoch_rate(loader, next(epochs), device)


def epoch_rate(loader, epoch: int, device: torch.device) -> float:
    """Images/s of one epoch, counted from its first batch (start-up excluded)."""
    loader.set_epoch(epoch)
    first, count = None, 0
    for images, _ in loader:
        if first is None:
            synchronize(device)
            first = time.perf_counter()
        else:
            count += images.shape[0]
    synchronize(device)
    return count / (time.perf_counter() - first)


# -- 3. training throughput ------------------------------------------------------------------
VARIANTS = {
    "trainer_sgd": "trainer, SGD-momentum",
    "trainer_adaact": "trainer, AdaAct",
    "trainer_adamw": "trainer, AdamW",
    "plain_sgd": "plain PyTorch loop, SGD-momentum",
}


def trainer_run(ctx: Context, spec: ModelSpec, optimizer: str, run_dir: Path) -> TrainerRun:
    """The trainer on synthetic batches of ``spec``'s size, ZeRO-1 on one rank; checkpoints,
    plots, TensorBoard and the activation probe off."""
    from adaact_dist.train import load_config

    overrides = [
        "data.backend=synthetic",
        f"model.name={spec.name}",
        f"model.num_classes={spec.num_classes}",
        f"model.kwargs={json.dumps(spec.kwargs)}",
        f"model.channels_last={str(spec.channels_last).lower()}",
        f"data.image_size={spec.image_size}",
        f"data.global_batch_size={spec.batch}",
        f"data.synthetic_train_samples={spec.batch * 10_000}",  # no epoch ends in the run
        f"distributed.device={ctx.device.type}",
        f"distributed.precision={'bf16' if ctx.device.type == 'cuda' else 'fp32'}",
        "distributed.precision_mode=autocast",
        "distributed.zero_stage=1",
        "schedule.epochs=1",
        "schedule.name=constant",
        "checkpoint.enabled=false",
        "checkpoint.resume=never",
        "checkpoint.skip_seen_batches=false",  # a segment need not replay earlier batches
        "logging.plots=false",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        "logging.activation_every_steps=0",
        f"run.output_dir={run_dir}",
        *optimizer_overrides(optimizer),
    ]
    return TrainerRun(load_config(None, overrides))


class TrainStep:
    """A training step of ``model`` on one fixed batch (bf16 autocast on the GPU), synchronised
    once, as a loop that logs its loss is; calling it returns the step's images/s."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, spec: ModelSpec):
        self.model, self.optimizer = model, optimizer
        self.x = image_batch(spec, next(model.parameters()).device)
        self.y = torch.arange(spec.batch, device=self.x.device) % spec.num_classes

    def __call__(self) -> float:
        synchronize(self.x.device)
        tick = time.perf_counter()
        with autocast(self.x.device):
            loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss.item()
        return self.x.shape[0] / (time.perf_counter() - tick)

    def advance(self, steps: int) -> list[float]:
        return [self() for _ in range(steps)]

    def close(self) -> None:
        pass


def plain_loop(spec: ModelSpec, device: torch.device) -> TrainStep:
    """The anchor: the same timm model in a plain PyTorch loop with SGD-momentum, in the
    trainer's layout (channels-last inputs, weights left contiguous: see
    ``adaact_dist.train.components.build_model``), so that the ratio compares the loops."""
    import timm
    from timm.optim import param_groups_weight_decay

    model = timm.create_model(spec.name, num_classes=spec.num_classes, **spec.kwargs).to(device)
    groups = param_groups_weight_decay(model, 1e-4)
    return TrainStep(model, torch.optim.SGD(groups, lr=0.01, momentum=0.9), spec)


def build_model(spec: ModelSpec, device: torch.device) -> torch.nn.Module:
    import timm

    model = timm.create_model(spec.name, num_classes=spec.num_classes, **spec.kwargs).to(device)
    return model.to(memory_format=torch.channels_last) if spec.channels_last else model


def image_batch(spec: ModelSpec, device: torch.device, batch: int | None = None) -> torch.Tensor:
    """The same random images on every call, in the model's memory format."""
    size = spec.image_size
    generator = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch or spec.batch, 3, size, size, device=device, generator=generator)
    return x.contiguous(memory_format=torch.channels_last) if spec.channels_last else x


def part_throughput(ctx: Context) -> Outcome:
    """Images/s of ResNet-50 and ViT-S at 224 px, bf16 autocast, micro-batch 256, on synthetic
    data through the trainer with SGD-momentum, AdaAct and AdamW, and in a plain PyTorch loop;
    segments interleaved in rotating order, medians of the per-step rates after a warm-up."""
    sizes, outcome = ctx.sizes, Outcome()
    if not installed("deepspeed"):
        outcome.notes.append("trainer runs skipped: deepspeed is not installed")
    for role, spec in sizes.models.items():
        builders = {"plain_sgd": functools.partial(plain_loop, spec, ctx.device)}
        if installed("deepspeed"):
            for opt in TRAINER_OPTIMIZERS:
                run_dir = ctx.work / "throughput" / f"{spec.name}-{opt}"
                shutil.rmtree(run_dir, ignore_errors=True)
                builders[f"trainer_{opt}"] = functools.partial(trainer_run, ctx, spec, opt, run_dir)
        medians, peaks, failed = interleave(builders, sizes, ctx.device)
        outcome.metrics[role] = {"model": spec.name, **medians}
        for key, label in VARIANTS.items():
            row = {"model": spec.name, "variant": label, "status": "skipped: no deepspeed"}
            if key in failed:
                row["status"] = f"failed: {failed[key]}"
                outcome.failures.append(f"{spec.name}, {label}: {failed[key]}")
            elif key in medians:
                row |= {
                    "status": "ok",
                    "images/s": medians[key],
                    "vs trainer SGD": ratio(medians[key], medians.get("trainer_sgd")),
                    "vs plain loop": ratio(medians[key], medians.get("plain_sgd")),
                    "peak memory (GiB)": peaks.get(key),
                }
            outcome.rows.append(row)
    outcome.notes.append(
        f"{sizes.warmup_steps} warm-up steps, then {sizes.rounds} rounds of {sizes.steps} steps "
        "per variant. The trainer: ZeRO-1 on 1 rank, weights in the default layout with "
        "channels-last inputs for the CNN (its choice), synthetic batches made on the device "
        "each step. The plain loop: channels-last weights for the CNN, one fixed batch. Peak "
        "memory: the most allocated during its build and warm-up, above what the others held."
    )
    return outcome


def interleave(builders: dict[str, Callable[[], Any]], sizes: Sizes, device: torch.device):
    """Build each variant and run its warm-up (the warm-up round), then ``rounds`` rotating
    rounds of ``steps`` steps each. Returns the median images/s and peak GiB per variant, and
    the failed ones (the other variants still run)."""
    runs, peaks, failed = {}, {}, {}

    def turn(name: str) -> list[float]:
        if name not in runs:  # the warm-up round: build, warm up, measure memory
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            runs[name] = builders[name]()
            runs[name].advance(sizes.warmup_steps)
            if device.type == "cuda":
                peaks[name] = (torch.cuda.max_memory_allocated(device) - before) / 2**30
            return []
        return runs[name].advance(sizes.steps)

    turns = {name: functools.partial(turn, name) for name in builders}
    medians = interleaved_medians(turns, sizes.rounds, warmup=1, rotate=True, failures=failed)
    for run in runs.values():
        run.close()
    return medians, peaks, failed


# -- 4. the optimizer core -------------------------------------------------------------------
def part_optimizer_core(ctx: Context) -> Outcome:
    """AdaAct's statistics hooks as a fraction of forward+backward (bf16 autocast), and
    ``step()`` against SGD-momentum and AdamW (foreach and fused), interleaved, medians."""
    sizes, outcome = ctx.sizes, Outcome()
    for role, spec in sizes.models.items():
        outcome.metrics[role], row = optimizer_core_of(spec, sizes.repeats, ctx.device)
        outcome.rows.append(row)
    outcome.notes.append(
        f"Batch {sizes.models['cnn'].batch}, {precision(ctx.device)}, channels-last CNN; medians "
        f"of {sizes.repeats} interleaved repetitions, each synchronised; AdaAct's default foreach."
    )
    return outcome


def optimizer_core_of(spec: ModelSpec, repeats: int, device: torch.device):
    from timm.optim import param_groups_weight_decay

    from adaact_dist import AdaAct

    hooked = build_model(spec, device)
    plain = copy.deepcopy(hooked)
    x, small = image_batch(spec, device), image_batch(spec, device, batch=2)
    groups = functools.partial(param_groups_weight_decay, hooked, 1e-4)
    adaact = AdaAct(groups(), model=hooked, lr=1e-3)
    fb = interleaved_medians(  # zero_grad also drops AdaAct's pending statistics
        {
            "no hooks": functools.partial(fwd_bwd, plain, x, plain.zero_grad),
            "AdaAct hooks": functools.partial(fwd_bwd, hooked, x, adaact.zero_grad),
        },
        repeats,
        warmup=1,
    )
    optimizers = {
        "AdaAct": adaact,
        "SGD-momentum (foreach)": torch.optim.SGD(groups(), lr=1e-3, momentum=0.9, foreach=True),
        "AdamW (foreach)": torch.optim.AdamW(groups(), lr=1e-3, foreach=True),
        "AdamW (fused)": torch.optim.AdamW(groups(), lr=1e-3, fused=True),
    }
    # AdaAct's step folds the statistics of the forwards since the last one: it gets a forward of
    # 2 images (untimed; the fold does not depend on the batch) before each timed step
    feed = functools.partial(hooked, small)
    step = interleaved_medians(
        {
            name: functools.partial(timed_step, opt, feed if opt is adaact else None)
            for name, opt in optimizers.items()
        },
        repeats,
        warmup=1,
    )
    overhead = fb["AdaAct hooks"] / fb["no hooks"] - 1
    metrics = {"model": spec.name, "stats_overhead": overhead}
    metrics |= {f"step_ms {name}": seconds * 1e3 for name, seconds in step.items()}
    row = {
        "model": spec.name,
        "fwd+bwd (ms)": fb["no hooks"] * 1e3,
        "with AdaAct's hooks (ms)": fb["AdaAct hooks"] * 1e3,
        "overhead": f"{overhead:+.1%}",
        **{f"step {name} (ms)": seconds * 1e3 for name, seconds in step.items()},
        "AdaAct / SGD": step["AdaAct"] / step["SGD-momentum (foreach)"],
        "AdaAct / AdamW fused": step["AdaAct"] / step["AdamW (fused)"],
    }
    return metrics, row


def fwd_bwd(model, x: torch.Tensor, zero_grad: Callable[[], Any]) -> float:
    """Seconds of one forward+backward under bf16 autocast, from zeroed gradients."""
    zero_grad()
    synchronize(x.device)
    tick = time.perf_counter()
    with autocast(x.device):
        loss = model(x).float().mean()
    loss.backward()
    synchronize(x.device)
    return time.perf_counter() - tick


def timed_step(optimizer, feed: Callable[[], Any] | None) -> float:
    """Seconds of one ``optimizer.step()`` (``feed``, an untimed forward, runs first)."""
    device = optimizer.param_groups[0]["params"][0].device
    if feed is not None:
        with autocast(device):
            feed()
    synchronize(device)
    tick = time.perf_counter()
    optimizer.step()
    synchronize(device)
    return time.perf_counter() - tick


# -- 5. torch.compile ------------------------------------------------------------------------
def part_compile(ctx: Context) -> Outcome:
    """``torch.compile`` (inductor) of the CNN with AdaAct's hooks: the statistics it collects
    against eager mode's, and images/s against eager mode's, interleaved; and how many graphs
    dynamo makes of a step, also with channels-last inputs (the trainer's layout for CNNs)."""
    from torch._dynamo.utils import counters  # dynamo's tally, which torch._dynamo.explain reads

    sizes, device, outcome = ctx.sizes, ctx.device, Outcome()
    spec = dataclasses.replace(sizes.models["cnn"], channels_last=False)
    eager = build_model(spec, device)
    compiled = torch.compile(copy.deepcopy(eager), backend=sizes.compile_backend)
    steps = {"compiled": adaact_step(spec, compiled), "eager": adaact_step(spec, eager)}
    counters.clear()
    tick = time.perf_counter()
    steps["compiled"]()
    compile_s = time.perf_counter() - tick
    graphs = counters["stats"]["unique_graphs"]
    steps["eager"]()
    # One step each from the same weights on the same batch: the same statistics up to bf16
    # rounding inside the model; the first layer reads the data itself, so alike to 1e-5.
    eager_v, compiled_v = (step.optimizer.activation_second_moments() for step in steps.values())
    errors = {k: ((compiled_v[k] - v).norm() / v.norm()).item() for k, v in eager_v.items()}
    first, worst = next(iter(errors)), max(errors.values())
    if errors[first] > 1e-5 or worst > 5e-2:
        outcome.failures.append(
            f"statistics differ from eager mode's: {first} by {errors[first]:.1e} (limit 1e-5), "
            f"the worst layer by {worst:.1e} (limit 5e-2)"
        )
    turns = {
        name: functools.partial(steps[name].advance, sizes.steps) for name in ("eager", "compiled")
    }
    medians = interleaved_medians(turns, sizes.rounds, rotate=True)  # each goes first in turn
    outcome.metrics = {"model": spec.name, "compile_s": compile_s, "graphs": graphs, **medians}
    outcome.rows.append(
        {
            "model": spec.name,
            "inputs": "contiguous",
            "backend": sizes.compile_backend,
            "graphs": graphs,
            "first step (s)": compile_s,
            "eager images/s": medians["eager"],
            "compiled images/s": medians["compiled"],
            "speed-up": medians["compiled"] / medians["eager"],
            f"V vs eager, {first}": errors[first],
            "V vs eager, worst layer": worst,
        }
    )
    if trace := sizes.channels_last_trace:  # dynamo alone: no code generation, so cheap
        counters.clear()
        adaact_step(trace, torch.compile(build_model(trace, device), backend="eager"))()
        graphs, breaks = counters["stats"]["unique_graphs"], counters["graph_break"]
        outcome.metrics["graphs_channels_last"] = graphs
        outcome.rows.append(
            {"model": trace.name, "inputs": "channels-last", "backend": "eager", "graphs": graphs}
        )
        outcome.notes += [f"graph break x{n}: {why.splitlines()[0]}" for why, n in breaks.items()]
    outcome.notes.append(
        f"Batch {spec.batch}, {precision(device)}; the timed run has contiguous inputs (one graph "
        "when the hooks trace cleanly); the channels-last row is dynamo alone, on 2 images."
    )
    return outcome


def adaact_step(spec: ModelSpec, model: torch.nn.Module) -> TrainStep:
    from adaact_dist import AdaAct

    return TrainStep(model, AdaAct(model.parameters(), model=model, lr=0.01), spec)
