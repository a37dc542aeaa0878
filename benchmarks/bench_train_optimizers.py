"""Images/s of AdaAct vs SGD-momentum vs AdamW in the trainer's own loop, in one run.

    .venv/bin/python -m benchmarks.bench_train_optimizers --out benchmarks/train_optimizers.md

Two workloads, each on one process through ``Trainer`` exactly as a launch would build
it (DeepSpeed engine, per-step lr, loss all-reduce, Mixup if configured):

* ``demo``: ``configs/demo.yaml`` (digits shards, small ResNet, 32 px, batch 64);
* ``resnet50``: timm ResNet-50 on synthetic batches (``data.backend: synthetic``).

The machines are shared and noisy, so the optimizers are interleaved finely: one
trainer per optimizer is built up front, and every round continues each trainer's loop
(``Trainer.run`` again with a higher ``run.stop_after_steps``: ``benchmarks.timing.TrainerRun``)
for ``--steps`` steps, in rotating order; the first ``--warmup`` rounds are not timed. The
table reports medians of the per-step wall time over all timed steps, and the speed
relative to SGD.
Checkpoints, plots and the activation probe are off: the comparison is about the
optimizer inside the loop.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import torch

from adaact_dist._machine import cpu_name
from adaact_dist.train.config_io import load_config
from benchmarks.timing import (
    TRAINER_OPTIMIZERS,
    TrainerRun,
    interleaved_medians,
    optimizer_overrides,
)

COMMON = [
    "checkpoint.enabled=false",
    "checkpoint.resume=never",
    "logging.plots=false",
    "logging.tensorboard=false",
    "logging.progress_bar=false",
    "logging.activation_every_steps=0",
    "logging.every_steps=1",  # every step is a sample
    "schedule.epochs=100",
]


def workloads(args) -> dict[str, tuple[str | None, list[str]]]:
    resnet50 = [
        "data.backend=synthetic",
        "model.name=resnet50",
        "model.num_classes=1000",
        f"data.image_size={args.image_size}",
        f"data.global_batch_size={args.batch}",
        f"data.synthetic_train_samples={args.batch * 1000}",
        "distributed.zero_stage=0",
        "distributed.precision=fp32",
        "model.channels_last=true",
    ]
    demo = [f"data.root={args.data}"] if args.data else []
    return {"demo": ("demo", demo), "resnet50": (None, resnet50)}


def bench(name, base, overrides, args, scratch: Path) -> dict[str, dict[str, float]]:
    runs = {}
    for opt in TRAINER_OPTIMIZERS:
        output = f"run.output_dir={scratch / name / opt}"
        config = load_config(base, [*COMMON, *overrides, *optimizer_overrides(opt), output])
        runs[opt] = TrainerRun(config, figure="step_time_s")
    turns = {opt: functools.partial(run.advance, args.steps) for opt, run in runs.items()}
    medians = interleaved_medians(turns, args.rounds, warmup=args.warmup, rotate=True)
    batch = runs["sgd"].trainer.plan.global_batch_size
    for run in runs.values():
        run.close()
    return {
        opt: {
            "median_step_s": median,
            "images_per_s": batch / median,
            "vs_sgd": medians["sgd"] / median,
            "samples": args.rounds * args.steps,
        }
        for opt, median in medians.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", default=["demo", "resnet50"])
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first rounds")
    parser.add_argument("--steps", type=int, default=2, help="steps per optimizer per round")
    parser.add_argument("--image-size", type=int, default=128, help="resnet50 image size")
    parser.add_argument("--batch", type=int, default=16, help="resnet50 global batch")
    parser.add_argument("--data", default=None, help="demo data cache dir (data.root)")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args()
    started = time.time()
    lines = [
        "# Trainer throughput: AdaAct vs SGD-momentum vs AdamW",
        "",
        f"Machine: {cpu_name()}, {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}, one process, fp32, DeepSpeed CPU accelerator; demo as "
        "configs/demo.yaml (ZeRO-1), resnet50 at ZeRO stage 0.",
        f"Command: `.venv/bin/python -m benchmarks.bench_train_optimizers "
        f"--rounds {args.rounds} --warmup {args.warmup} --steps {args.steps} "
        f"--image-size {args.image_size} "
        f"--batch {args.batch}`. Interleaved rounds on a shared machine; medians of "
        "per-step wall time (data + forward + backward + optimizer step) over all rounds.",
        "",
        "| workload | optimizer | median step (s) | images/s | speed vs SGD | steps |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.workloads:
            base, overrides = workloads(args)[name]
            for opt, row in bench(name, base, overrides, args, Path(scratch)).items():
                lines.append(
                    f"| {name} | {opt} | {row['median_step_s']:.4f} | {row['images_per_s']:.1f} "
                    f"| {row['vs_sgd']:.3f} | {row['samples']} |"
                )
    lines += ["", f"Total benchmark time: {time.time() - started:.0f} s."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
