"""What the activation-statistics sync costs under DeepSpeed ZeRO, and what each rank stores.

    .venv/bin/deepspeed --num_gpus 2 benchmarks/bench_stats_sync.py --json sync2.json
    .venv/bin/deepspeed --num_gpus 1 benchmarks/bench_stats_sync.py --json sync1.json

On every rank: timm resnet50 (25.6 M parameters), AdaAct with timm's parameter grouping,
``deepspeed_initialize`` at ZeRO stage ``--stage``; ``--steps``
timed steps of ``--batch`` random images per rank after ``--warmup`` steps, for each
``k`` in ``--sync-every``. Reported (medians):

* ``step``: one whole step (forward, backward, ``engine.step``) on rank 0;
* ``sync``: one call of the distributor's all-reduce of the flat ``V``, as it runs inside
  the step (it includes waiting for the slower rank), and ``sync / step`` amortised over
  ``k`` steps; ``allreduce alone``: the same all-reduce after a barrier, 50 times;
* ``fold+sync+refresh``: all of ``update_preconditioner`` (statistics fold every step;
  all-reduce and ``D`` refresh on sync steps);
* bytes per sync, and per-rank optimizer state: measured for this world size and
  computed from DeepSpeed's partition layout (groups padded to a multiple of 2N, cut in N
  equal slices; one flat fp32 ``exp_avg`` and one ``step`` per group) for N = 1, 2, 8.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F

import adaact_dist
from adaact_dist._machine import cpu_name
from adaact_dist.distributed import TorchStatsSync, deepspeed_initialize, init_distributed


class TimedSync:
    """The distributor, timed per call."""

    def __init__(self, inner: TorchStatsSync):
        self.inner, self.seconds = inner, []

    def average_(self, flat: torch.Tensor) -> None:
        start = time.perf_counter()
        self.inner.average_(flat)
        self.seconds.append(time.perf_counter() - start)


def computed_state_bytes(group_sizes: list[int], world: int) -> int:
    """Per-rank bytes of AdaAct's sharded state, from DeepSpeed 0.19's ZeRO-1/2 layout."""
    total = 0
    for numel in group_sizes:
        aligned = -(-numel // (2 * world)) * (2 * world)
        total += aligned // world * 4 + 4  # flat fp32 exp_avg + a 0-dim fp32 step
    return total


def run(args, k: int) -> dict:
    torch.manual_seed(0)
    model = timm.create_model("resnet50", num_classes=1000)
    optimizer = adaact_dist.create_optimizer(model, lr=4.0, weight_decay=1e-4, stats_sync_every=k)
    config = {
        "train_micro_batch_size_per_gpu": args.batch,
        "zero_optimization": {"stage": args.stage},
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": 0.0,  # DeepSpeed 0.19 clips at 1.0 unless told otherwise
        "steps_per_print": 10**6,
    }
    engine, *_ = deepspeed_initialize(model=model, optimizer=optimizer, config=config)
    timed = TimedSync(optimizer.distributor)
    optimizer.distributor = timed
    refresh_seconds = []
    update = optimizer.update_preconditioner

    def timed_update():  # ZeRO calls it once per group; only the first call folds
        folds, start = optimizer._stats_step, time.perf_counter()
        update()
        if optimizer._stats_step != folds:
            refresh_seconds.append(time.perf_counter() - start)

    optimizer.update_preconditioner = timed_update
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 1000, (args.batch,))
    step_seconds = []
    for step in range(args.warmup + args.steps):
        dist.barrier()
        start = time.perf_counter()
        engine.backward(F.cross_entropy(engine(x), y))
        engine.step()
        if step >= args.warmup:
            step_seconds.append(time.perf_counter() - start)
    flat_v = optimizer._table.second_moment
    alone = []
    for _ in range(50):
        dist.barrier()
        start = time.perf_counter()
        timed.inner.average_(flat_v.clone())
        alone.append(time.perf_counter() - start)
    state_bytes = sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if torch.is_tensor(t)
    )
    groups = [sum(p.numel() for p in params) for params in engine.optimizer.bit16_groups]
    step_s = statistics.median(step_seconds)
    sync_s = statistics.median(timed.seconds[1:])  # the first one meets the ranks' start-up
    return {
        "k": k,
        "world": dist.get_world_size(),
        "step_s": step_s,
        "sync_s": sync_s,
        "sync_fraction_per_step": sync_s / k / step_s,
        "allreduce_alone_s": statistics.median(alone),
        "update_preconditioner_s": statistics.median(refresh_seconds),
        "update_preconditioner_sync_s": statistics.median(refresh_seconds[::k][1:]),
        "syncs": len(timed.seconds),
        "bytes_per_sync": flat_v.numel() * flat_v.element_size(),
        "features": flat_v.numel(),
        "state_bytes_measured": state_bytes,
        "state_bytes_computed": {n: computed_state_bytes(groups, n) for n in (1, 2, 8)},
        "replicated_stats_bytes": 3 * flat_v.numel() * flat_v.element_size(),
        "params": sum(groups),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sync-every", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--local_rank", type=int, default=0)
    args = parser.parse_args()
    init_distributed(timeout_s=600)
    torch.set_num_threads(1)
    results = [run(args, k) for k in args.sync_every]
    if dist.get_rank() != 0:
        return
    name = cpu_name()
    print(f"\n{name}, {dist.get_world_size()} rank(s), 1 thread each, ZeRO stage {args.stage}, "
          f"resnet50, batch {args.batch} x {args.size} px per rank")  # fmt: skip
    print("| k | step (ms) | sync (ms), n | sync/step amortised | allreduce alone (ms) "
          "| update_preconditioner (ms) | same, sync steps (ms) | bytes/sync "
          "| state bytes/rank |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['k']} | {r['step_s'] * 1e3:.0f} | {r['sync_s'] * 1e3:.2f}, "
              f"{r['syncs'] - 1} | {r['sync_fraction_per_step']:.4%} | "
              f"{r['allreduce_alone_s'] * 1e3:.2f} | {r['update_preconditioner_s'] * 1e3:.2f} | "
              f"{r['update_preconditioner_sync_s'] * 1e3:.2f} | {r['bytes_per_sync']:,} | "
              f"{r['state_bytes_measured']:,} |")  # fmt: skip
    print("computed per-rank state bytes:", results[0]["state_bytes_computed"])
    if args.json:
        args.json.write_text(json.dumps({"machine": name, "results": results}, indent=2))


if __name__ == "__main__":
    main()
