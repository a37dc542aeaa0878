"""What every study plot shares: headless matplotlib, one colour per optimizer, one layout."""

from __future__ import annotations

from pathlib import Path

from adaact_dist.train.optimizers import OPTIMIZERS


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (studies run on machines without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def optimizer_color(optimizer: str) -> str | None:
    """The optimizer table's colour, so that an optimizer looks the same in every plot."""
    spec = OPTIMIZERS.get(optimizer)
    return None if spec is None else spec.color


def save(fig, path: Path, legend_from=None) -> Path:
    """Lay out and write ``fig``; ``legend_from``: the axes whose legend goes above all panels."""
    top = 1.0
    if legend_from is not None:
        handles, labels = legend_from.get_legend_handles_labels()
        if handles:
            top = 1.0 - 0.45 / fig.get_figheight()
            fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
