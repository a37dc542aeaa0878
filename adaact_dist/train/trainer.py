"""The training loop: DeepSpeed engine, per-step lr, evaluation, checkpoints, records.

One optimizer step = ``accumulation_steps`` micro-batches per rank. Before each
backward, one tiny all-reduce carries the loss, a non-finite flag and a stop flag,
so every rank stops at the same step: on a non-finite loss (nothing is stepped or
saved; the last good checkpoint stays) and on SIGTERM/SIGUSR1 (a checkpoint is
written, then a clean exit).
"""

from __future__ import annotations

import contextlib
import math
import random
import resource
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from adaact_dist._seeds import derive_seed
from adaact_dist.distributed import HangWatchdog, apply_stage0_loss_scale, bound_engine_collectives
from adaact_dist.train.activations import ActivationProbe, input_second_moments
from adaact_dist.train.checkpoint import CheckpointManager, rng_state, set_rng_state
from adaact_dist.train.components import (
    build_mixup,
    build_model,
    build_optimizer,
    build_random_erasing,
    build_train_loss,
    check_model_name,
    engine_input_dtype,
    load_mixup_state,
    mixup_state,
)
from adaact_dist.train.config import ConfigValueError, TrainConfig
from adaact_dist.train.config_io import ConfigError, config_error, config_to_dict
from adaact_dist.train.ds_config import deepspeed_config
from adaact_dist.train.evaluate import EvalResult, average_batchnorm_buffers, evaluate
from adaact_dist.train.job import join_job, leave_job
from adaact_dist.train.loaders import build_loaders
from adaact_dist.train.logger import get_logger
from adaact_dist.train.loss_tally import LossTally
from adaact_dist.train.metrics import MetricsWriter, NullMetricsWriter, Progress
from adaact_dist.train.noise_scale import GradientNormProbe
from adaact_dist.train.optimizers import OPTIMIZERS
from adaact_dist.train.plan import make_plan
from adaact_dist.train.plots import plot_run
from adaact_dist.train.resume import ResumePoint, choose_resume_point
from adaact_dist.train.run_record import RunRecord
from adaact_dist.train.run_summary import RunSummary, StopReason
from adaact_dist.train.schedule import LRSchedule
from adaact_dist.train.shared_run_dir import check_run_dir_shared

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainerState:
    """Where the run stands; saved in every checkpoint as DeepSpeed client state."""

    global_step: int = 0
    epoch: int = 0
    """The epoch to continue (0-based)."""
    step_in_epoch: int = 0
    """Optimizer steps of ``epoch`` already done."""
    last_eval_epoch: int = -1
    best_top1: float | None = None
    best_epoch: int | None = None
    last_eval: dict[str, Any] | None = None
    train_time_s: float = 0.0
    """Seconds spent in training steps (evaluation and checkpoints excluded)."""
    images_seen: int = 0
    target_steps: int | None = None
    """Steps done when an evaluation first reached ``run.target_top1``."""


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def rng_neutral(seed: int):
    """Run the block from a fixed seed, then put every global RNG back as it was."""
    saved = rng_state()
    seed_all(seed)
    try:
        yield
    finally:
        set_rng_state(saved)


@dataclass
class StepResult:
    """What one optimizer step reports to the loop's decisions."""

    loss: float
    """Mean training loss over the step's micro-batches and ranks."""
    lr: float
    seconds: float
    stop_requested: bool
    """Some rank received SIGTERM/SIGUSR1."""
    activation_variances: dict[str, float] | None = None
    """Per-layer variance of the first micro-batch, on probing steps of rank 0."""
    gradient_sq_norms: tuple[float, float] | None = None
    """``(|G_micro|^2, |G_batch|^2)`` on gradient-noise probing steps."""


class Trainer:
    """Builds every part of a run from ``config`` (collectively, on every rank), then runs it.

    :meth:`train_step` is one optimizer step and nothing else; :meth:`run` decides around
    it when to log, evaluate, checkpoint and stop.
    """

    def __init__(self, config: TrainConfig):
        self.config = config
        self.log = get_logger()
        try:
            self.job = join_job(config.distributed)
            self.rank, self.world_size, self.device = (
                self.job.rank,
                self.job.world_size,
                self.job.device,
            )
            self._build()
        except ConfigValueError as error:  # a value only this node, world size or data refutes
            raise config_error(config, error) from None

    # -- construction ------------------------------------------------------------------
    def _build(self) -> None:
        """Everything a start needs, in the order that lets a bad config fail before any
        work: plan, run directory checks (shared by every host, this run's), data, resume
        point, engine, then the state."""
        config = self.config
        check_model_name(config)
        self.plan = make_plan(config, self.world_size, device=self.device)
        self.ds_config = deepspeed_config(config, self.plan)
        self.run_dir = Path(config.run.resolved_output_dir)
        check_run_dir_shared(  # before any rank looks into it: one directory on every host
            self.run_dir, config.run.resolved_output_dir, rank=self.rank, world_size=self.world_size
        )
        record = RunRecord(self.run_dir)
        changed = record.check(config)  # before any work: this directory's run, or refuse
        self.log.info(
            "%d rank(s) via %s on %s | global batch %d = %d ranks x micro %d x accumulation %d"
            " | lr %.4g (x%.3g)",
            self.world_size, self.job.launcher, self.device, self.plan.global_batch_size,
            self.world_size, self.plan.micro_batch_size, self.plan.accumulation_steps,
            self.plan.lr, self.plan.lr_scale,
        )  # fmt: skip
        self._build_data()
        warmup_steps = self._warmup_steps()
        self._check_noise_scale()
        point = self._find_resume_point()
        self._build_engine()
        self._build_step_parts(warmup_steps)
        self.state = TrainerState()
        self._pending_rng = None
        self.resumed_from = self._resume(point) if point is not None else None
        self._record_start(record, changed)
        self.metrics = self._metrics_writer()
        self._stop_requested = False
        self._stop_signal: int | None = None
        self.watchdog: HangWatchdog | None = None  # run() starts it, when configured

    def _build_data(self) -> None:
        """Loaders, and the run's length in steps and epochs that follows from them."""
        config = self.config
        self.loaders = build_loaders(
            config, self.plan, rank=self.rank, world_size=self.world_size, device=self.device
        )
        self.steps_per_epoch = len(self.loaders.train) // self.plan.accumulation_steps
        if self.steps_per_epoch < 1:
            raise ConfigValueError(
                "data.global_batch_size",
                self.plan.global_batch_size,
                f"at most the training split per epoch ({len(self.loaders.train)} "
                f"micro-batches of {self.plan.micro_batch_size} per rank)",
            )
        self.total_steps = (
            config.schedule.max_steps or config.schedule.epochs * self.steps_per_epoch
        )
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)

    def _find_resume_point(self) -> ResumePoint | None:
        """The checkpoint to continue from (``checkpoint.resume``), before the engine exists:
        a universal checkpoint changes how DeepSpeed must be configured."""
        config = self.config
        self.checkpoints = CheckpointManager(
            self.run_dir / "checkpoints",
            keep_last=config.checkpoint.keep_last,
            keep_best=config.checkpoint.keep_best,
            rank=self.rank,
        )
        self.run_config = config_to_dict(config)
        point = choose_resume_point(
            self.checkpoints,
            config.checkpoint.resume,
            world_size=self.world_size,
            run_config=self.run_config,
            allowed=tuple(config.checkpoint.allow_changes),
        )
        if point is not None and point.universal is not None:
            self.ds_config.setdefault("checkpoint", {})["load_universal"] = True
        return point

    def _build_step_parts(self, warmup_steps: int) -> None:
        """The lr schedule, batch mixing, loss and erasing of each step; per-rank RNG."""
        config = self.config
        self.schedule = LRSchedule(
            peak_lr=self.plan.lr,
            total_steps=self.total_steps,
            warmup_steps=warmup_steps,
            warmup_lr=self.plan.warmup_lr,
            min_lr=self.plan.min_lr,
            shape=config.schedule.name,
        )
        self.mixup = build_mixup(config, seed=derive_seed(config.run.seed, "mixup", rank=self.rank))
        self.criterion = build_train_loss(config)
        self.random_erasing = build_random_erasing(config, self.device)
        # Augmentation and drop-path differ per rank.
        seed_all(derive_seed(config.run.seed, "global-rng", rank=self.rank))

    def _record_start(self, record: RunRecord, changed: dict) -> None:
        """Built and resumed: this start counts (rank 0 writes the run record)."""
        if self.rank == 0:
            record.record_start(
                self.config,
                world_size=self.world_size,
                launcher=self.job.launcher,
                plan=self.plan.as_dict(),
                deepspeed_config=self.ds_config,
                changed=changed,
            )
        if changed:
            self.log.warning(
                "Continuing %s with changed %s (checkpoint.allow_changes)",
                self.run_dir,
                ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items()),
            )

    def _metrics_writer(self) -> MetricsWriter | NullMetricsWriter:
        """Rank 0 writes the records; on resume, rows past the checkpoint are dropped."""
        if self.rank != 0:
            return NullMetricsWriter()
        config = self.config
        return MetricsWriter(
            self.run_dir,
            tensorboard=config.logging.tensorboard,
            resume_step=self.state.global_step if self.resumed_from else None,
            noise_scale=bool(config.logging.noise_scale_every_steps),
        )

    def _warmup_steps(self) -> int:
        """The warm-up in steps, which must leave at least one step after it."""
        schedule = self.config.schedule
        if schedule.warmup_steps is not None:
            key, value, steps = "warmup_steps", schedule.warmup_steps, schedule.warmup_steps
        else:
            key, value = "warmup_epochs", schedule.warmup_epochs
            steps = round(schedule.warmup_epochs * self.steps_per_epoch)
        if steps >= self.total_steps:
            raise ConfigValueError(
                f"schedule.{key}", value, f"shorter than the run ({self.total_steps} steps)"
            )
        return steps

    def _check_noise_scale(self) -> None:
        """The probe reads one process's accumulated gradients between micro-batches."""
        every = self.config.logging.noise_scale_every_steps
        if every and self.world_size != 1:
            raise ConfigValueError(
                "logging.noise_scale_every_steps",
                every,
                f"0 on {self.world_size} ranks: the gradient noise scale is measured in one "
                "process (launch it without a distributed launcher)",
            )
        if every and self.plan.accumulation_steps < 2:
            raise ConfigValueError(
                "logging.noise_scale_every_steps",
                every,
                "0 without gradient accumulation: it compares each micro-batch's gradient with "
                "the whole batch's; set data.micro_batch_size below data.global_batch_size",
            )

    def _build_engine(self) -> None:
        import deepspeed

        config = self.config
        seed_all(config.run.seed)  # same initial weights everywhere (DeepSpeed broadcasts too)
        model = build_model(config, self.device)
        self.probe = ActivationProbe(model) if config.logging.activation_every_steps else None
        self.optimizer = build_optimizer(config, model, self.plan)
        initialize = deepspeed.initialize
        if OPTIMIZERS[config.optim.name].layer_statistics:
            from adaact_dist.distributed import deepspeed_initialize as initialize
        self.engine, _, _, _ = initialize(
            model=model, optimizer=self.optimizer, config=self.ds_config, dist_init_required=False
        )
        bound_engine_collectives(self.engine)  # DeepSpeed's groups: the job's timeout too
        apply_stage0_loss_scale(self.engine)  # fp16 at stage 0, for every optimizer
        self.noise_probe = (
            GradientNormProbe(self.engine.module.parameters(), self.plan.accumulation_steps)
            if config.logging.noise_scale_every_steps
            else None
        )
        if config.model.compile:
            self.engine.compile()
        self.input_dtype = engine_input_dtype(config)

    def _resume(self, point: ResumePoint) -> Path:
        path = point.checkpoint.path
        trainer_state, rank_state = self.checkpoints.load(
            self.engine, path, universal=point.universal
        )
        self.state = TrainerState(**trainer_state)
        self._pending_rng = rank_state
        if rank_state is None:
            self.log.warning("No RNG state for rank %d in %s: reseeding", self.rank, path)
            seed_all(
                derive_seed(
                    self.config.run.seed, "global-rng", rank=self.rank, step=self.state.global_step
                )
            )
        self.log.info(
            "Resumed from %s: step %d, epoch %d (+%d steps)",
            path, self.state.global_step, self.state.epoch, self.state.step_in_epoch,
        )  # fmt: skip
        return path

    # -- one step ----------------------------------------------------------------------
    def train_step(self, batches: Iterator) -> StepResult:
        """One optimizer step: ``accumulation_steps`` micro-batches of forward and backward,
        each followed by ``engine.step()`` (DeepSpeed steps the optimizer on the last)."""
        state, engine = self.state, self.engine
        tick = time.perf_counter()
        lr = self.schedule.apply(engine.optimizer, state.global_step)
        every = self.config.logging.activation_every_steps
        probing = self.probe is not None and self.rank == 0 and state.global_step % every == 0
        noise_every = self.config.logging.noise_scale_every_steps
        measuring = self.noise_probe is not None and state.global_step % noise_every == 0
        variances = None
        losses = LossTally(self.device)
        last = self.plan.accumulation_steps - 1
        for micro in range(self.plan.accumulation_steps):
            batch = next(batches, None)
            if batch is None:
                raise RuntimeError(
                    f"The training loader of rank {self.rank} ended after "
                    f"{state.step_in_epoch} of {self.steps_per_epoch} steps of epoch "
                    f"{state.epoch}, short of the {len(self.loaders.train)} batches it announced"
                )
            images, targets = self._prepare(batch)
            if probing and micro == 0:
                self.probe.arm()
            output = engine(images)
            if probing and micro == 0:
                variances = self.probe.collect()
            loss = self.criterion(output.float(), targets)
            losses.add(loss)
            engine.backward(loss)
            if measuring:
                self.noise_probe.after_backward()
            if micro == last:  # before DeepSpeed's optimizer step, in the last engine.step()
                mean_loss, stop = self._agree_on_losses(losses, state.global_step)
            engine.step()
            if self.watchdog is not None:
                self.watchdog.pet()
        return StepResult(
            loss=mean_loss,
            lr=lr,
            seconds=time.perf_counter() - tick,
            stop_requested=stop,
            activation_variances=variances,
            gradient_sq_norms=self.noise_probe.finish() if measuring else None,
        )

    # -- the loop and its decisions ----------------------------------------------------
    def run(self) -> RunSummary:
        """Train to the end (or to a stop); return the summary written to ``summary.json``."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        self.progress = Progress(
            total=self.total_steps,
            initial=self.state.global_step,
            enabled=self.config.logging.progress_bar and self.rank == 0,
        )
        hang = self.config.distributed.hang_timeout_s
        self.watchdog = HangWatchdog(hang) if hang else None
        started = time.perf_counter()
        reason = StopReason.ERROR  # an exception other than divergence: no more collectives
        try:
            with self.progress.redirect_logging(self.log):
                reason = self._train()
        except TrainingDiverged:
            reason = StopReason.DIVERGED
            raise
        finally:
            if self.watchdog is not None:
                self.watchdog.close()
            self.progress.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            summary = self._finish(reason, time.perf_counter() - started)
        return summary

    def close(self) -> None:
        """Close the records. Until then ``run()`` may be called again, e.g. after raising
        ``config.run.stop_after_steps``: it continues where it stopped."""
        self.metrics.close()

    def _paused(self):
        """Evaluation, checkpoints and plots are legitimate pauses for the hang watchdog."""
        return self.watchdog.paused() if self.watchdog is not None else contextlib.nullcontext()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_requested = True
        self._stop_signal = signum

    def _train(self) -> StopReason:
        config, state = self.config, self.state
        for epoch in range(state.epoch, self.epochs):
            state.epoch = epoch
            if state.step_in_epoch < self._steps_in(epoch):
                reason = self._train_epoch(epoch)
                if reason is not None:
                    return reason
            last = epoch == self.epochs - 1
            if state.last_eval_epoch != epoch and (
                last or (epoch + 1) % config.eval.every_epochs == 0
            ):
                self._evaluate_epoch(epoch)
            reached = self._target_reached()
            state.epoch, state.step_in_epoch = epoch + 1, 0
            if config.checkpoint.enabled and (config.checkpoint.every_epoch or last or reached):
                self._save()
            if reached:
                return StopReason.TARGET_REACHED
            if self.rank == 0 and config.logging.plots:
                self._plot()
        return StopReason.COMPLETED

    def _steps_in(self, epoch: int) -> int:
        """Optimizer steps of ``epoch``: a whole epoch, or what ``schedule.max_steps`` leaves."""
        return min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)

    def _evaluation_due(self) -> bool:
        """``eval.geometric_spacing``: the steps since the last evaluation reached that
        fraction of the steps done."""
        spacing, state = self.config.eval.geometric_spacing, self.state
        if not spacing:
            return False
        last = state.last_eval["step"] if state.last_eval else 0
        return state.global_step - last >= max(1, math.floor(spacing * state.global_step))

    def _target_reached(self) -> bool:
        """Whether an evaluation at the current step reached ``run.target_top1``."""
        target, last = self.config.run.target_top1, self.state.last_eval
        return (
            target is not None
            and bool(last)
            and last["step"] == self.state.global_step
            and last["top1"] >= target
        )

    def _record_target(self, top1: float) -> None:
        """The first evaluation at or above ``run.target_top1``: its step is the result."""
        target, state = self.config.run.target_top1, self.state
        if target is None or top1 < target or state.target_steps is not None:
            return
        state.target_steps = state.global_step
        self.log.info(
            "validation top-1 %.2f%% reached the target %.2f%% after %d steps (%d images)",
            top1, target, state.global_step, state.images_seen,
        )  # fmt: skip

    def _batches(self, epoch: int) -> Iterator:
        loader = self.loaders.train
        loader.set_epoch(epoch)
        with rng_neutral(
            derive_seed(self.config.run.seed, "loader-start", rank=self.rank, epoch=epoch)
        ):
            iterator = iter(loader)
        skip = self.state.step_in_epoch * self.plan.accumulation_steps
        if skip and self.config.checkpoint.skip_seen_batches:
            self.log.info("Skipping %d batches of epoch %d already trained on", skip, epoch)
            with self._paused():
                for _ in range(skip):
                    next(iterator)
        if self._pending_rng is not None:  # exactly where the saved run stood
            set_rng_state(self._pending_rng["rng"])
            load_mixup_state(self.mixup, self._pending_rng.get("mixup"))
            self._pending_rng = None
        return iterator

    def _train_epoch(self, epoch: int) -> StopReason | None:
        """Steps to the epoch's end; a stop reason if the run stops inside it."""
        config, state = self.config, self.state
        batches = self._batches(epoch)
        while state.step_in_epoch < self._steps_in(epoch):
            step = state.global_step
            result = self.train_step(batches)
            state.global_step += 1
            state.step_in_epoch += 1
            state.train_time_s += result.seconds
            state.images_seen += self.plan.global_batch_size
            self._record_step(step, epoch, result)
            if result.stop_requested or (
                config.run.stop_after_steps is not None
                and state.global_step >= config.run.stop_after_steps
            ):
                return self._stop(result.stop_requested)
            if self._evaluation_due():
                self._evaluate(epoch, epoch_end=False)
                if self._target_reached():
                    if config.checkpoint.enabled:
                        self._save()
                    return StopReason.TARGET_REACHED
            every = config.checkpoint.every_steps
            # At an epoch's end the epoch checkpoint follows its evaluation instead.
            epoch_end = (
                state.step_in_epoch == self.steps_per_epoch and config.checkpoint.every_epoch
            )
            if config.checkpoint.enabled and every and state.global_step % every == 0:
                if not epoch_end:
                    self._save()
        return None

    def _record_step(self, step: int, epoch: int, result: StepResult) -> None:
        images_per_s = self.plan.global_batch_size / max(result.seconds, 1e-9)
        self.progress.update(epoch=epoch, loss=result.loss, lr=result.lr, images_per_s=images_per_s)
        if step % self.config.logging.every_steps == 0:
            self.metrics.log_step(
                {
                    "step": step,
                    "epoch": epoch,
                    "lr": result.lr,
                    "loss": result.loss,
                    "images_per_s": images_per_s,
                    "step_time_s": result.seconds,
                    "elapsed_s": self.state.train_time_s,
                    "skipped_steps": getattr(self.engine, "skipped_steps", 0),
                }
            )
        if result.activation_variances is not None:
            self.metrics.log_activations(
                step, result.activation_variances, input_second_moments(self.optimizer)
            )
        if result.gradient_sq_norms is not None:
            small, big = result.gradient_sq_norms
            self.metrics.log_noise_scale(
                {
                    "step": step,
                    "small_batch": self.plan.micro_batch_size,
                    "big_batch": self.plan.global_batch_size,
                    "small_sq_norm": small,
                    "big_sq_norm": big,
                }
            )

    def _stop(self, requested: bool) -> StopReason:
        """A signal or ``run.stop_after_steps``: checkpoint, then end the run cleanly."""
        if requested:
            name = signal.Signals(self._stop_signal).name if self._stop_signal else "a signal"
            self.log.warning("Stop requested (%s on some rank): checkpointing", name)
        if self.config.checkpoint.enabled:
            self._save()
        return StopReason.PREEMPTED if requested else StopReason.STOP_AFTER_STEPS

    def _prepare(self, batch):
        images, labels = batch
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.config.model.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.random_erasing is not None:
            images = self.random_erasing(images)
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
        if self.input_dtype is not None:
            images = images.to(self.input_dtype)
        return images, targets

    def _agree_on_losses(self, losses: LossTally, step: int) -> tuple[float, bool]:
        """All ranks' (mean loss, non-finite count, stop requests) in one all-reduce and one
        device read per optimizer step; raise on a non-finite loss anywhere, before the
        optimizer step."""
        flags = losses.flags(self._stop_requested)
        if self.world_size > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.SUM)
        total, bad, stop = flags.tolist()
        if bad:
            latest = self.checkpoints.latest()
            kept = f"the last good checkpoint is {latest.path}" if latest else "no checkpoint yet"
            raise TrainingDiverged(
                f"Non-finite loss in {int(bad)} micro-batch(es) over {self.world_size} rank(s) "
                f"at step {step}, epoch {self.state.epoch}: stopping before the optimizer "
                f"step; {kept}. Lower optim.lr, add warm-up (schedule.warmup_epochs) or "
                "gradient clipping."
            )
        return total / (self.world_size * losses.count), stop > 0

    # -- evaluation, checkpoints, records ------------------------------------------------
    def _evaluate_epoch(self, epoch: int) -> None:
        """The epoch's evaluation, unless one already ran at this very step."""
        last = self.state.last_eval
        if last and last["step"] == self.state.global_step:
            self.state.last_eval_epoch = epoch
            return
        self._evaluate(epoch)

    def _evaluate(self, epoch: int, *, epoch_end: bool = True) -> EvalResult:
        with self._paused():
            return self._evaluate_now(epoch, epoch_end)

    def _evaluate_now(self, epoch: int, epoch_end: bool) -> EvalResult:
        tick = time.perf_counter()
        average_batchnorm_buffers(self.engine.module)
        val = self.loaders.val
        result = evaluate(
            self.engine,
            val,
            device=self.device,
            channels_last=self.config.model.channels_last,
            input_dtype=self.input_dtype,
            expected_count=self.loaders.val_total,
            count_skipped=lambda: val.num_skipped,
        )
        state = self.state
        if epoch_end:
            state.last_eval_epoch = epoch
        state.last_eval = {"epoch": epoch, "step": state.global_step, **result.as_dict()}
        if state.best_top1 is None or result.top1 > state.best_top1:
            state.best_top1, state.best_epoch = result.top1, epoch
        self.metrics.log_eval(
            {
                "step": state.global_step,
                "epoch": epoch,
                "top1": result.top1,
                "top5": result.top5,
                "loss": result.loss,
                "count": result.count,
                "elapsed_s": state.train_time_s,
            }
        )
        where = f"epoch {epoch}" if epoch_end else f"step {state.global_step}"
        message = (
            f"{where}: val top-1 {result.top1:.2f}% top-5 {result.top5:.2f}% "
            f"loss {result.loss:.4f} ({result.count} images, {time.perf_counter() - tick:.1f} s)"
        )
        if self.progress.bar is not None:
            self.progress.write(message)
        else:
            self.log.info(message)
        self._record_target(result.top1)
        return result

    def _save(self) -> None:
        with self._paused():
            self._save_now()

    def _save_now(self) -> None:
        self.metrics.flush(durable=True)  # the records are never behind a checkpoint
        average_batchnorm_buffers(self.engine.module)
        state = self.state
        top1 = None  # only an epoch-end checkpoint right after its evaluation has a score
        if (
            state.step_in_epoch == 0
            and state.last_eval
            and state.last_eval_epoch == state.epoch - 1
        ):
            top1 = state.last_eval["top1"]
        self.checkpoints.save(
            self.engine,
            step=state.global_step,
            epoch=state.epoch,
            top1=top1,
            trainer_state=asdict(state),
            rank_state={"mixup": mixup_state(self.mixup)},
            run_config=self.run_config,
        )

    def _plot(self) -> list[Path]:
        self.metrics.flush()
        try:
            with self._paused():
                return plot_run(self.run_dir)
        except Exception as error:  # a plot must never take a run down
            self.log.warning("Plotting failed: %s", error)
            return []

    def _finish(self, reason: StopReason, wall_s: float) -> RunSummary:
        state = self.state
        peak = _peak_memory_mb(self.device)
        if self.world_size > 1 and reason != StopReason.ERROR:  # every rank got here: reduce
            tensor = torch.tensor([peak], dtype=torch.float64, device=self.device)
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            peak = float(tensor.item())
        best = self.checkpoints.best()
        last_eval = state.last_eval or {}
        summary = RunSummary(
            name=self.config.run.name,
            stop_reason=reason,
            optimizer=self.config.optim.name,
            model=self.config.model.name,
            world_size=self.world_size,
            plan=self.plan.as_dict(),
            epochs=self.epochs,
            epochs_done=state.epoch,
            steps=state.global_step,
            total_steps=self.total_steps,
            best_top1=state.best_top1,
            best_epoch=state.best_epoch,
            final_top1=last_eval.get("top1"),
            final_top5=last_eval.get("top5"),
            final_eval_count=last_eval.get("count"),
            target_top1=self.config.run.target_top1,
            target_steps=state.target_steps,
            target_images=(
                None
                if state.target_steps is None
                else state.target_steps * self.plan.global_batch_size
            ),
            train_time_s=state.train_time_s,
            wall_time_s=wall_s,
            images_per_s=state.images_seen / state.train_time_s if state.train_time_s else None,
            peak_memory_mb=peak,
            resumed_from=str(self.resumed_from) if self.resumed_from else None,
            best_checkpoint=str(best.path) if best else None,
            run_dir=str(self.run_dir),
        )
        if self.rank == 0:
            path = summary.write(self.run_dir)
            plots = self._plot() if self.config.logging.plots and reason != StopReason.ERROR else []
            self.metrics.flush()
            where = f"; plots {plots[0].parent}" if plots else ""
            if summary.finished:
                self.log.info(
                    "final validation top-1 %.1f%% (best %.1f%% at epoch %s); summary %s%s",
                    summary.final_top1, summary.best_top1, summary.best_epoch, path, where,
                )  # fmt: skip
            else:
                last = summary.final_top1
                self.log.info(
                    "stopped (%s) at step %d of %d; last validation top-1 %s; summary %s%s",
                    reason, state.global_step, self.total_steps,
                    "none yet" if last is None else f"{last:.1f}%", path, where,
                )  # fmt: skip
        return summary


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def train(config: TrainConfig) -> RunSummary:
    """Run ``config`` to completion on this process's rank; the summary on every rank."""
    trainer = None
    try:
        trainer = Trainer(config)
        return trainer.run()
    finally:
        if trainer is not None:
            trainer.close()
        leave_job()


__all__ = ["ConfigError", "Trainer", "TrainerState", "TrainingDiverged", "train"]
