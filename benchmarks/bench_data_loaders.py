"""Training-loader throughput on CPU: images/s per core at 224 px with the timm A2 transforms.

    .venv/bin/python benchmarks/bench_data_loaders.py                # 2,048 photos, A2
    .venv/bin/python benchmarks/bench_data_loaders.py --images 2048 --epochs 5
    .venv/bin/python benchmarks/bench_data_loaders.py --auto-augment none   # crop + flip only

Three loaders over the same JPEGs (ImageNet-sized crops of scikit-image's bundled photos,
quality 90, see ``adaact_dist.data.photos``), each with ``--workers`` processes or threads on a
machine whose cores are all given to it:

* ``wds``: this project's webdataset loader + timm A2 transforms (the default CPU path);
* ``dali``: this project's DALI pipeline on CPU (``device_id=None``);
* ``timm-imagefolder``: timm's own ``create_dataset`` folder reader + ``create_loader`` with the
  same A2 arguments (the everyday anchor).

Throughput is measured per epoch from the first batch to the last (start-up latency, which
includes DALI's per-epoch pipeline build, is reported separately). Epochs of the loaders are
interleaved, so that load from other processes affects all of them alike, and the median over
epochs is printed as a Markdown table with the machine's load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from adaact_dist._machine import cpu_name

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def prepare(work: Path, images: int) -> tuple[Path, Path]:
    """Photo ImageFolder tree and its shards (cached in ``work``)."""
    from adaact_dist.data import make_photo_set, write_shards

    tree, shards = work / f"photos-{images}", work / f"photos-{images}-wds"
    if not (tree / ".complete").exists():
        make_photo_set(tree, num_images=images)
        (tree / ".complete").write_text("")
    if not (shards / "train" / "manifest.json").exists():
        write_shards(tree, shards, split="train", shard_size=256, workers=os.cpu_count() or 1)
    return tree, shards


def timm_imagefolder_loader(tree: Path, batch_size: int, workers: int, auto_augment: str | None):
    from timm.data import create_dataset, create_loader

    dataset = create_dataset("", root=str(tree), split="train", is_training=True)
    return create_loader(
        dataset,
        input_size=(3, 224, 224),
        batch_size=batch_size,
        is_training=True,
        interpolation="random",
        mean=MEAN,
        std=STD,
        num_workers=workers,
        device=torch.device("cpu"),
        use_prefetcher=True,
        persistent_workers=True,
        auto_augment=auto_augment,
    )


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its live children (DataLoader workers)."""
    own = os.times()
    total = own.user + own.system
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # field 4, ppid
            total += (int(fields[11]) + int(fields[12])) / _TICK  # fields 14, 15: utime, stime
    return total


def run_epoch(loader, epoch: int, set_epoch: bool) -> tuple[float, float, float]:
    """One epoch, counted after its first batch: images per wall second, images per CPU
    second (all processes of the loader), and the first batch's latency (s)."""
    if set_epoch:
        loader.set_epoch(epoch)
    start = time.perf_counter()
    first = cpu0 = None
    count = 0
    for images, _ in loader:
        if first is None:
            first, cpu0 = time.perf_counter(), cpu_seconds()
            continue
        count += images.shape[0]
    wall, cpu = time.perf_counter() - first, cpu_seconds() - cpu0
    return count / wall, count / cpu, first - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs after a warm-up")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument(
        "--work", type=Path, default=Path(os.environ.get("ADAACT_CACHE", "/tmp")) / "bench-data"
    )
    parser.add_argument("--only", choices=["wds", "dali", "timm-imagefolder"], action="append")
    parser.add_argument(
        "--auto-augment",
        default="rand-m7-mstd0.5-inc1",
        help="timm RandAugment string of all loaders; 'none' for crop + flip only",
    )
    args = parser.parse_args()
    augment = None if args.auto_augment.lower() == "none" else args.auto_augment
    torch.set_num_threads(1)  # the consumer only normalises; leave the cores to the loaders
    tree, shards = prepare(args.work, args.images)
    cores = len(os.sched_getaffinity(0))

    from adaact_dist.data import LoaderConfig, create_loader

    def ours(backend: str):
        return create_loader(
            LoaderConfig(
                backend=backend,
                split="train",
                shards=shards,
                batch_size=args.batch_size,
                num_workers=args.workers,
                seed=0,
                auto_augment=augment,
            )
        )

    builders = {
        "wds": (lambda: ours("wds"), True),
        "dali": (lambda: ours("dali"), True),
        "timm-imagefolder": (
            lambda: timm_imagefolder_loader(tree, args.batch_size, args.workers, augment),
            False,
        ),
    }
    names = args.only or list(builders)
    loaders = {name: builders[name][0]() for name in names}
    for name in names:  # warm-up epoch: worker start, imports, page cache
        run_epoch(loaders[name], 0, builders[name][1])
    rates: dict[str, list[float]] = {name: [] for name in names}
    per_cpu: dict[str, list[float]] = {name: [] for name in names}
    latencies: dict[str, list[float]] = {name: [] for name in names}
    for epoch in range(1, args.epochs + 1):  # interleaved, so load from elsewhere hits all alike
        for name in names:
            rate, cpu_rate, latency = run_epoch(loaders[name], epoch, builders[name][1])
            rates[name].append(rate)
            per_cpu[name].append(cpu_rate)
            latencies[name].append(latency)
            print(f"epoch {epoch} {name}: {rate:.1f} img/s, {cpu_rate:.1f} img/CPU-s", flush=True)
    med = statistics.median
    results = {
        name: {"rate": med(rates[name]), "cpu": med(per_cpu[name]), "latency": med(latencies[name])}
        for name in names
    }
    load = os.getloadavg()
    print(f"\n{cpu_name()}, {cores} cores, torch {torch.__version__}, {args.workers} workers")
    print(f"load average during the run (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(
        f"{args.images} photos at 224 px, batch {args.batch_size}, RandAugment {augment}, "
        f"median of {args.epochs} epochs\n"
    )
    print(
        "| loader | images/s (wall) | images/s per core (wall / cores) | images per CPU-second "
        "| vs timm ImageFolder (per CPU-s) | first batch (s) |"
    )
    print("|---|---|---|---|---|---|")
    anchor = results.get("timm-imagefolder", {}).get("cpu")
    for name, r in results.items():
        ratio = f"{r['cpu'] / anchor:.2f}x" if anchor else "n/a"
        print(
            f"| {name} | {r['rate']:.1f} | {r['rate'] / cores:.1f} | {r['cpu']:.1f} | {ratio} | "
            f"{r['latency']:.2f} |"
        )


if __name__ == "__main__":
    main()
