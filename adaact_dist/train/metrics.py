"""Rank 0's records of a run: CSV files, TensorBoard events and the progress bar.

``metrics.csv`` has one row per logged optimizer step, ``eval.csv`` one per
evaluation, ``activations.csv`` one per (probe step, layer), ``noise_scale.csv`` (when
recorded) one per gradient-norm probe step. On resume, rows past the
checkpoint's step are dropped (they belong to the interrupted attempt) and
TensorBoard is opened with ``purge_step``, so the records continue as if the run had
never stopped. Other ranks get a writer that does nothing.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import sys
from pathlib import Path
from typing import Any

from adaact_dist.train.noise_scale import NOISE_CSV, NOISE_FIELDS

TRAIN_CSV = "metrics.csv"
EVAL_CSV = "eval.csv"
ACTIVATIONS_CSV = "activations.csv"
TRAIN_FIELDS = (
    "step",
    "epoch",
    "lr",
    "loss",
    "images_per_s",
    "step_time_s",
    "elapsed_s",
    "skipped_steps",
)
EVAL_FIELDS = ("step", "epoch", "top1", "top5", "loss", "count", "elapsed_s")
ACTIVATION_FIELDS = ("step", "layer", "index", "variance", "input_second_moment")


class _CsvLog:
    """``keep_until``: on resume, rows whose step is below it survive (the rest belong to
    the interrupted attempt)."""

    def __init__(self, path: Path, fields: tuple[str, ...], keep_until: int | None):
        self.path = path
        self.fields = fields
        if keep_until is None or not path.is_file():
            rows: list[dict[str, str]] = []
        else:
            with path.open(newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) < keep_until]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        self.handle = path.open("a", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=fields, extrasaction="ignore")

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow(row)

    def flush(self, durable: bool = False) -> None:
        self.handle.flush()
        if durable:
            os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


class MetricsWriter:
    """CSV + TensorBoard on rank 0; ``resume_step`` drops what a dead attempt left.

    Training and activation rows are keyed by the step's index (0-based); an evaluation
    row by the number of steps done when it ran, and TensorBoard files it under the index
    of the last of those steps. Resuming with ``resume_step`` steps done keeps training
    rows below it and evaluations up to it.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard: bool,
        resume_step: int | None = None,
        noise_scale: bool = False,
    ):
        run_dir = Path(run_dir)
        after = None if resume_step is None else resume_step + 1
        self.train = _CsvLog(run_dir / TRAIN_CSV, TRAIN_FIELDS, resume_step)
        self.eval = _CsvLog(run_dir / EVAL_CSV, EVAL_FIELDS, after)
        self.activations = _CsvLog(run_dir / ACTIVATIONS_CSV, ACTIVATION_FIELDS, resume_step)
        self.noise = (
            _CsvLog(run_dir / NOISE_CSV, NOISE_FIELDS, resume_step) if noise_scale else None
        )
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)

    def log_step(self, row: dict[str, Any]) -> None:
        self.train.write(row)
        if self.tb is not None:
            step = row["step"]
            for key in ("loss", "lr", "images_per_s"):
                self.tb.add_scalar(f"train/{key}", row[key], step)

    def log_eval(self, row: dict[str, Any]) -> None:
        self.eval.write(row)
        self.eval.flush()
        if self.tb is not None:
            for key in ("top1", "top5", "loss"):
                self.tb.add_scalar(f"eval/{key}", row[key], max(0, row["step"] - 1))

    def log_activations(
        self, step: int, variance: dict[str, float], second_moment: dict[str, float]
    ) -> None:
        for index, (layer, value) in enumerate(variance.items()):
            self.activations.write(
                {
                    "step": step,
                    "layer": layer,
                    "index": index,
                    "variance": value,
                    "input_second_moment": second_moment.get(layer, ""),
                }
            )
        if self.tb is not None and variance:
            values = list(variance.values())
            self.tb.add_scalar("activations/mean_variance", sum(values) / len(values), step)

    def log_noise_scale(self, row: dict[str, Any]) -> None:
        if self.noise is None:
            raise RuntimeError("MetricsWriter was opened without noise_scale=True")
        self.noise.write(row)

    def _logs(self) -> list[_CsvLog]:
        logs = [self.train, self.eval, self.activations]
        return logs if self.noise is None else [*logs, self.noise]

    def flush(self, durable: bool = False) -> None:
        """``durable``: also fsync the CSVs (before a checkpoint, so that no checkpoint is
        ever ahead of the records)."""
        for log in self._logs():
            log.flush(durable)
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        for log in self._logs():
            log.close()
        if self.tb is not None:
            self.tb.close()


class NullMetricsWriter:
    """What non-zero ranks hold: :class:`MetricsWriter`'s methods, each doing nothing.

    Spelled out rather than accepting any name, so that a misspelt call fails on every rank.
    """

    def log_step(self, row: dict[str, Any]) -> None:
        pass

    def log_eval(self, row: dict[str, Any]) -> None:
        pass

    def log_activations(
        self, step: int, variance: dict[str, float], second_moment: dict[str, float]
    ) -> None:
        pass

    def log_noise_scale(self, row: dict[str, Any]) -> None:
        pass

    def flush(self, durable: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


class Progress:
    """A tqdm bar over the whole run on rank 0: epoch, loss, lr, images/s, ETA."""

    def __init__(self, *, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            tty = sys.stderr.isatty()
            self.bar = tqdm(
                total=total,
                initial=initial,
                unit="step",
                dynamic_ncols=True,
                mininterval=0.5 if tty else 30.0,
                file=sys.stderr,
            )

    def update(self, *, epoch: int, loss: float, lr: float, images_per_s: float) -> None:
        if self.bar is None:
            return
        self.bar.set_description(f"epoch {epoch}", refresh=False)
        self.bar.set_postfix(
            loss=f"{loss:.4f}", lr=f"{lr:.3g}", img_s=f"{images_per_s:.0f}", refresh=False
        )
        self.bar.update(1)

    def redirect_logging(self, logger: logging.Logger):
        """While the bar is shown, log records go through it instead of breaking its line."""
        if self.bar is None:
            return contextlib.nullcontext()
        from tqdm.contrib.logging import logging_redirect_tqdm

        return logging_redirect_tqdm(loggers=[logger])

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
