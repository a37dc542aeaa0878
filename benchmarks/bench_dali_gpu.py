"""DALI "mixed" (GPU) decoding throughput; exits cleanly, doing nothing, without a CUDA GPU.

    .venv/bin/python benchmarks/bench_dali_gpu.py                    # 2,048 photos, batch 256
    .venv/bin/python benchmarks/bench_dali_gpu.py --images 4096 --json gpu.json

Runs this project's DALI loader with ``device="cuda"`` (nvJPEG / hardware JPEG decoding with
random-resized-crop on the GPU, timm-like RandAugment and normalisation on the GPU) over the same
photo shards as ``bench_data_loaders.py``, for training (A2 augmentation) and evaluation
(resize + centre crop), and the webdataset CPU loader on the same machine for reference.
Reports images/s (median over epochs, first batch excluded) as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data_loaders import cpu_model, prepare  # noqa: E402


def measure(loader, epochs: int, device: torch.device) -> float:
    """Median images/s over ``epochs`` timed epochs (after one warm-up epoch)."""
    rates = []
    for epoch in range(epochs + 1):
        loader.set_epoch(epoch)
        first, count = None, 0
        for images, _ in loader:
            if first is None:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                first = time.perf_counter()
                continue
            count += images.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if epoch > 0:
            rates.append(count / (time.perf_counter() - first))
    return statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(8, len(os.sched_getaffinity(0))))
    parser.add_argument(
        "--work", type=Path, default=Path(os.environ.get("ADAACT_CACHE", "/tmp")) / "bench-data"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("SKIPPED: no CUDA GPU here; DALI 'mixed' decoding needs one (nothing measured)")
        return 0
    from adaact_dist.data import LoaderConfig, create_loader

    device = torch.device("cuda", torch.cuda.current_device())
    _, shards = prepare(args.work, args.images)
    common = dict(shards=shards, split="train", batch_size=args.batch_size, seed=0)
    runs = {
        "dali mixed, train (A2)": ("dali", dict(device=device, num_workers=args.threads)),
        "dali mixed, eval": (
            "dali",
            dict(device=device, num_workers=args.threads, is_training=False, shuffle=False),
        ),
        "wds CPU workers, train (A2)": ("wds", dict(device=device, num_workers=args.threads)),
    }
    results = {}
    for name, (backend, options) in runs.items():
        loader = create_loader(LoaderConfig(backend=backend, **common, **options))
        results[name] = measure(loader, args.epochs, device)
        print(f"{name}: {results[name]:.0f} img/s", flush=True)
        del loader
    cores = len(os.sched_getaffinity(0))
    header = (
        f"{torch.cuda.get_device_name(device)}; {cpu_model()}, {cores} cores; "
        f"{args.threads} DALI threads / wds workers; {args.images} photos at 224 px, "
        f"batch {args.batch_size}, median of {args.epochs} epochs"
    )
    print(f"\n{header}\n\n| loader | images/s |\n|---|---|")
    for name, rate in results.items():
        print(f"| {name} | {rate:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"setup": header, "images_per_s": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
