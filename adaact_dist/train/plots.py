"""PNG plots of a run, redrawn at any time from its CSV files.

``training.png``: training loss, learning rate, validation top-1/top-5, and the
per-layer activation variance over training (one line per layer, shallow to deep).
``activation_variance.png``: each layer's activation variance averaged over training,
as in the paper's Figure 1; given several runs (AdaAct, SGD, AdamW...), they share
the axes, which is how "AdaAct keeps it lower than Adam" is checked.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from adaact_dist.train.metrics import ACTIVATIONS_CSV, EVAL_CSV, TRAIN_CSV

PLOTS_DIR = "plots"


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _floats(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows]


def _layer_series(run_dir: Path) -> dict[str, tuple[int, list[int], list[float]]]:
    """layer -> (depth index, steps, variances)."""
    series: dict[str, tuple[int, list[int], list[float]]] = {}
    for row in _read(run_dir / ACTIVATIONS_CSV):
        index, steps, values = series.setdefault(row["layer"], (int(row["index"]), [], []))
        steps.append(int(row["step"]))
        values.append(float(row["variance"]))
    return series


def _run_label(run_dir: Path) -> str:
    return run_dir.resolve().name


def plot_run(run_dir: str | Path) -> list[Path]:
    """Draw ``<run>/plots/training.png`` and ``activation_variance.png``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    run_dir = Path(run_dir)
    out = run_dir / PLOTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    train, evals = _read(run_dir / TRAIN_CSV), _read(run_dir / EVAL_CSV)
    layers = _layer_series(run_dir)

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    if train:
        ax.plot(_floats(train, "step"), _floats(train, "loss"), lw=0.8)
    ax.set(title="training loss", xlabel="step", ylabel="loss")
    ax = axes[0][1]
    if train:
        ax.plot(_floats(train, "step"), _floats(train, "lr"), lw=1.0)
    ax.set(title="learning rate", xlabel="step", ylabel="lr")
    ax = axes[1][0]
    if evals:
        ax.plot(_floats(evals, "epoch"), _floats(evals, "top1"), "o-", label="top-1")
        ax.plot(_floats(evals, "epoch"), _floats(evals, "top5"), "s--", label="top-5")
        ax.legend()
    ax.set(title="validation accuracy", xlabel="epoch", ylabel="%")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax = axes[1][1]
    cmap = plt.get_cmap("viridis")
    depth = max((index for index, _, _ in layers.values()), default=0) or 1
    for index, steps, values in layers.values():
        ax.plot(steps, values, color=cmap(index / depth), lw=0.8)
    ax.set(title="activation variance per layer (dark: shallow, light: deep)", xlabel="step")
    if layers:
        ax.set_yscale("log")
    fig.suptitle(_run_label(run_dir))
    fig.tight_layout()
    paths = [out / "training.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    paths.append(plot_activation_comparison([run_dir], out / "activation_variance.png"))
    return paths


def plot_activation_comparison(run_dirs: list[str | Path], output: str | Path) -> Path:
    """Per-layer activation variance averaged over training, one line per run (Fig. 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for run_dir in map(Path, run_dirs):
        layers = _layer_series(run_dir)
        if not layers:
            continue
        ordered = sorted(layers.values(), key=lambda item: item[0])
        means = [sum(values) / len(values) for _, _, values in ordered]
        ax.plot(range(len(means)), means, "o-", ms=3, label=_run_label(run_dir))
    ax.set(
        title="activation variance averaged over training",
        xlabel="layer (Linear/Conv2d, input to output)",
        ylabel="variance",
    )
    ax.set_yscale("log")
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def mean_activation_variance(run_dir: str | Path) -> dict[str, float]:
    """Each layer's variance averaged over the run's probe steps."""
    return {
        name: sum(values) / len(values)
        for name, (_, _, values) in _layer_series(Path(run_dir)).items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Redraw a run's plots from its CSV files; with several runs, also "
        "compare their per-layer activation variance."
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories")
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="output PNG of the comparison (default: activation_variance_comparison.png "
        "next to the first run)",
    )
    args = parser.parse_args(argv)
    missing = [d for d in args.run_dirs if not (d / TRAIN_CSV).is_file()]
    if missing:
        parser.error(f"not a run directory (no {TRAIN_CSV}): {', '.join(map(str, missing))}")
    for run_dir in args.run_dirs:
        for path in plot_run(run_dir):
            print(path)
    if len(args.run_dirs) > 1:
        target = args.compare or args.run_dirs[0].parent / "activation_variance_comparison.png"
        print(plot_activation_comparison(args.run_dirs, target))
    return 0
