"""The trainer's configuration: one dataclass per component, mapped 1:1 onto the YAML sections.

Every field carries a docstring line; ``__post_init__`` rejects impossible values with
``ConfigValueError`` naming the dotted key. Loading (YAML, ``--set``, sources of each
value) lives in :mod:`adaact_dist.train.config_io`; what depends on the world size
(micro-batch, accumulation, scaled lr) in :mod:`adaact_dist.train.plan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from adaact_dist.data import defaults as transform_defaults
from adaact_dist.data.config import BACKENDS, num_workers_requirement
from adaact_dist.train.optimizers import OPTIMIZERS


class ConfigValueError(ValueError):
    """An impossible config value; ``key`` is its dotted name (``optim.lr``)."""

    def __init__(self, key: str, value: Any, requirement: str):
        self.key = key
        super().__init__(f"Invalid {key}={value!r}: must be {requirement}")


class _Section:
    SECTION: ClassVar[str] = ""

    def _require(self, name: str, ok: bool, requirement: str) -> None:
        if not ok:
            raise ConfigValueError(f"{self.SECTION}.{name}", getattr(self, name), requirement)


@dataclass(kw_only=True)
class RunConfig(_Section):
    """Where the run writes and how it is seeded."""

    SECTION: ClassVar[str] = "run"

    name: str = "run"
    """Run name, used in logs and plot titles."""
    output_dir: str | None = None
    """Run directory (config, metrics, checkpoints, plots); default ``runs/<name>``."""
    seed: int = 42
    """Seed of model init (same on all ranks) and of augmentation (offset by rank)."""
    stop_after_steps: int | None = None
    """Stop cleanly after this many optimizer steps (schedule still spans all epochs)."""
    target_top1: float | None = None
    """End the run at the first evaluation whose top-1 (%) reaches this; the summary records
    the steps and images it took (``target_steps``, ``target_images``)."""

    def __post_init__(self) -> None:
        self._require(
            "name", bool(self.name) and "/" not in self.name, "a non-empty name without '/'"
        )
        self._require("seed", self.seed >= 0, ">= 0")
        self._require(
            "stop_after_steps", self.stop_after_steps is None or self.stop_after_steps > 0, "> 0"
        )
        target = self.target_top1
        self._require("target_top1", target is None or 0.0 < target <= 100.0, "in (0, 100]")

    @property
    def resolved_output_dir(self) -> str:
        return self.output_dir or f"runs/{self.name}"


@dataclass(kw_only=True)
class ModelConfig(_Section):
    """The network, built with ``timm.create_model`` (never with downloaded weights)."""

    SECTION: ClassVar[str] = "model"

    name: str = "resnet50"
    """Any timm model name: resnet50, resnet101, deit_small_patch16_224, ..."""
    num_classes: int = 1000
    """Classifier outputs."""
    drop_path_rate: float = 0.0
    """Stochastic depth rate (timm ``drop_path_rate``)."""
    drop_rate: float = 0.0
    """Dropout before the classifier."""
    channels_last: bool = True
    """Feed batches in channels-last memory format, which selects NHWC convolution kernels
    (for CNNs; set false for ViTs). Weights keep the default layout for DeepSpeed."""
    compile: bool = False
    """Wrap the model in ``torch.compile``."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for ``timm.create_model`` (e.g. ``channels`` of a ResNet)."""

    def __post_init__(self) -> None:
        self._require("name", bool(self.name), "a timm model name")
        self._require("num_classes", self.num_classes >= 2, ">= 2")
        self._require("drop_path_rate", 0.0 <= self.drop_path_rate < 1.0, "in [0, 1)")
        self._require("drop_rate", 0.0 <= self.drop_rate < 1.0, "in [0, 1)")
        if "pretrained" in self.kwargs:
            raise ConfigValueError(
                "model.kwargs.pretrained",
                self.kwargs["pretrained"],
                "absent: nothing is downloaded",
            )


@dataclass(kw_only=True)
class DataConfig(_Section):
    """Shards, batch geometry and loader workers."""

    SECTION: ClassVar[str] = "data"

    backend: str = "wds"
    """A name of :data:`~adaact_dist.data.config.BACKENDS`: ``wds`` (webdataset + timm
    transforms), ``dali``, ``memory`` (a small split decoded once into memory; crop and flip
    only), or ``synthetic`` random batches."""
    root: str | None = None
    """Shard root holding ``<split>/manifest.json``; with ``builtin``, the cache directory
    (null: ``$ADAACT_CACHE`` or ``~/.cache/adaact-dist``)."""
    builtin: Literal["digits", "digits_noisy", "digits_deformed"] | None = None
    """An embedded data set, built on first use: ``digits`` (sklearn, for the demo),
    ``digits_noisy`` (the same with 40% of the training labels wrong, validation clean), or
    ``digits_deformed`` (22,992 training images: deformed copies of the digits)."""
    train_split: str = "train"
    """Split name of the training shards."""
    val_split: str = "val"
    """Split name of the validation shards."""
    image_size: int = transform_defaults.IMAGE_SIZE
    """Training and evaluation image size (square)."""
    global_batch_size: int = 2048
    """Images per optimizer step over all ranks (the recipe's batch)."""
    micro_batch_size: int | None = None
    """Images per rank per forward; null: the largest that fits ``max_micro_batch_size``."""
    max_micro_batch_size: int = 256
    """Upper bound of the derived micro-batch (what one device holds)."""
    num_workers: int = 8
    """Loader worker processes per rank."""
    strict: bool = False
    """Stop on the first bad sample instead of skipping and counting it."""
    synthetic_train_samples: int = 4096
    """Training set size of the synthetic backend."""
    synthetic_val_samples: int = 1000
    """Validation set size of the synthetic backend."""

    def __post_init__(self) -> None:
        self._require(
            "backend", self.backend in BACKENDS, "one of " + ", ".join(map(repr, BACKENDS))
        )
        self._require(
            "root",
            self.backend == "synthetic" or self.builtin is not None or bool(self.root),
            "a shard directory (the one holding train/ and val/ with their manifest.json)",
        )
        self._require(
            "builtin", self.builtin is None or self.backend != "synthetic", "null for synthetic"
        )
        self._require("image_size", self.image_size >= 8, ">= 8")
        self._require("global_batch_size", self.global_batch_size >= 1, ">= 1")
        self._require(
            "micro_batch_size", self.micro_batch_size is None or self.micro_batch_size >= 1, ">= 1"
        )
        self._require("max_micro_batch_size", self.max_micro_batch_size >= 1, ">= 1")
        self._require("num_workers", self.num_workers >= 0, ">= 0")
        workers = num_workers_requirement(self.backend, self.num_workers)
        self._require("num_workers", workers is None, str(workers))
        self._require(
            "num_workers",
            self.backend != "memory" or self.num_workers == 0,
            "0 with the memory backend (it has no workers)",
        )
        self._require("synthetic_train_samples", self.synthetic_train_samples >= 1, ">= 1")
        self._require("synthetic_val_samples", self.synthetic_val_samples >= 1, ">= 1")


@dataclass(kw_only=True)
class AugmentationConfig(_Section):
    """Per-sample transforms (in the loader) and batch mixing (Mixup/CutMix on device).

    The transform defaults are the loader's (:mod:`adaact_dist.data.defaults`): timm's A2.
    """

    SECTION: ClassVar[str] = "augmentation"

    auto_augment: str | None = transform_defaults.AUTO_AUGMENT
    """timm auto-augment policy (training), e.g. ``rand-m7-mstd0.5-inc1``; null: none."""
    crop_pct: float = transform_defaults.CROP_PCT
    """Evaluation centre-crop fraction."""
    scale: tuple[float, float] = transform_defaults.SCALE
    """RandomResizedCrop area range (training)."""
    hflip: float = transform_defaults.HFLIP
    """Horizontal-flip probability (training)."""
    mixup_alpha: float = 0.0
    """Mixup beta-distribution alpha; 0 disables Mixup."""
    cutmix_alpha: float = 0.0
    """CutMix alpha; 0 disables CutMix."""
    mixup_prob: float = 1.0
    """Probability of mixing a batch at all."""
    mixup_switch_prob: float = 0.5
    """Probability of CutMix instead of Mixup when both are on."""
    mixup_mode: Literal["batch", "pair", "elem"] = "batch"
    """How mixing parameters are drawn (timm ``Mixup`` mode)."""
    re_prob: float = 0.0
    """Random-erasing probability."""
    re_mode: Literal["const", "rand", "pixel"] = "pixel"
    """Random-erasing fill mode."""

    def __post_init__(self) -> None:
        self._require("crop_pct", 0.0 < self.crop_pct <= 1.0, "in (0, 1]")
        low, high = self.scale
        self._require("scale", 0.0 < low <= high <= 1.0, "two numbers with 0 < low <= high <= 1")
        self._require("hflip", 0.0 <= self.hflip <= 1.0, "in [0, 1]")
        self._require("mixup_alpha", self.mixup_alpha >= 0.0, ">= 0")
        self._require("cutmix_alpha", self.cutmix_alpha >= 0.0, ">= 0")
        self._require("mixup_prob", 0.0 <= self.mixup_prob <= 1.0, "in [0, 1]")
        self._require("mixup_switch_prob", 0.0 <= self.mixup_switch_prob <= 1.0, "in [0, 1]")
        self._require("re_prob", 0.0 <= self.re_prob <= 1.0, "in [0, 1]")

    @property
    def mixing(self) -> bool:
        return self.mixup_prob > 0.0 and (self.mixup_alpha > 0.0 or self.cutmix_alpha > 0.0)


@dataclass(kw_only=True)
class LossConfig(_Section):
    """Training loss (evaluation always reports cross-entropy)."""

    SECTION: ClassVar[str] = "loss"

    name: Literal["ce", "bce"] = "ce"
    """``ce`` cross-entropy, or ``bce`` binary cross-entropy as in timm's A2 recipe."""
    label_smoothing: float = 0.0
    """Label smoothing (applied through Mixup's targets when mixing is on)."""
    bce_target_threshold: float | None = 0.2
    """BCE only: targets above this become 1 (A2 uses 0.2); null keeps soft targets."""

    def __post_init__(self) -> None:
        self._require("label_smoothing", 0.0 <= self.label_smoothing < 1.0, "in [0, 1)")
        threshold = self.bce_target_threshold
        self._require(
            "bce_target_threshold", threshold is None or 0.0 <= threshold < 1.0, "in [0, 1)"
        )


@dataclass(kw_only=True)
class OptimConfig(_Section):
    """Optimizer and its hyperparameters (weight decay skips 1-D params and biases)."""

    SECTION: ClassVar[str] = "optim"

    name: str = "adaact"
    """A name of :data:`~adaact_dist.train.optimizers.OPTIMIZERS`: ``adaact``; ``sgd``
    (momentum), ``adamw``, and timm's ``lamb`` and ``lars`` (ZeRO stage 0 only) are baselines
    run in the same loop."""
    lr: float = 4.0
    """Peak learning rate at ``lr_base_batch_size`` images per step."""
    lr_base_batch_size: int | None = None
    """Global batch that ``lr`` belongs to; lr scales linearly with the actual global batch
    (null: no scaling)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdaAct/AdamW/LAMB (beta1, beta2)."""
    eps: float = 1e-8
    """AdaAct/AdamW/LAMB epsilon."""
    weight_decay: float = 1e-4
    """Weight decay, not on 1-D parameters and biases: decoupled for AdaAct, AdamW and LAMB;
    an L2 term added to the gradient for SGD and LARS (timm's momentum and LARS)."""
    momentum: float = 0.9
    """SGD/LARS momentum."""
    stats_sync_every: int = 1
    """AdaAct: average activation statistics across ranks every k steps."""
    gradient_clipping: float = 0.0
    """Clip the global gradient norm to this value; 0 disables."""

    def __post_init__(self) -> None:
        self._require("name", self.name in OPTIMIZERS, "one of " + ", ".join(map(repr, OPTIMIZERS)))
        self._require("lr", math.isfinite(self.lr) and self.lr > 0.0, "a finite number > 0")
        base = self.lr_base_batch_size
        self._require("lr_base_batch_size", base is None or base >= 1, ">= 1 or null")
        self._require("betas", all(0.0 <= b < 1.0 for b in self.betas), "two numbers in [0, 1)")
        self._require("eps", self.eps > 0.0, "> 0")
        self._require("weight_decay", self.weight_decay >= 0.0, ">= 0")
        self._require("momentum", 0.0 <= self.momentum < 1.0, "in [0, 1)")
        self._require("stats_sync_every", self.stats_sync_every >= 1, ">= 1")
        self._require("gradient_clipping", self.gradient_clipping >= 0.0, ">= 0")


@dataclass(kw_only=True)
class ScheduleConfig(_Section):
    """Training length and the per-step learning-rate schedule."""

    SECTION: ClassVar[str] = "schedule"

    epochs: int = 100
    """Training epochs."""
    max_steps: int | None = None
    """Train this many optimizer steps instead, ending mid-epoch if need be (``epochs`` is
    then unused); the schedule spans them."""
    name: Literal["cosine", "constant"] = "cosine"
    """Shape after warm-up: cosine decay to ``min_lr``, or constant."""
    warmup_epochs: float = 0.0
    """Linear warm-up length in epochs (fractions allowed), from ``warmup_lr`` to the peak."""
    warmup_steps: int | None = None
    """Warm-up length in optimizer steps instead of ``warmup_epochs`` (which must then be 0)."""
    warmup_lr: float = 0.0
    """Learning rate at step 0 of the warm-up (scaled with the batch like ``optim.lr``)."""
    min_lr: float = 0.0
    """Learning rate at the end of the cosine (scaled with the batch like ``optim.lr``)."""

    def __post_init__(self) -> None:
        self._require("epochs", self.epochs >= 1, ">= 1")
        self._require(
            "warmup_epochs",
            0.0 <= self.warmup_epochs < self.epochs,
            f"in [0, schedule.epochs) = [0, {self.epochs})",
        )
        self._require("max_steps", self.max_steps is None or self.max_steps >= 1, ">= 1")
        warmup = self.warmup_steps
        self._require("warmup_steps", warmup is None or warmup >= 0, ">= 0")
        self._require(
            "warmup_steps",
            warmup is None or self.warmup_epochs == 0.0,
            "null when schedule.warmup_epochs is set (one warm-up length, not two)",
        )
        self._require(
            "warmup_steps",
            warmup is None or self.max_steps is None or warmup < self.max_steps,
            f"< schedule.max_steps ({self.max_steps})",
        )
        self._require("warmup_lr", self.warmup_lr >= 0.0, ">= 0")
        self._require("min_lr", self.min_lr >= 0.0, ">= 0")


@dataclass(kw_only=True)
class DistributedConfig(_Section):
    """Process group, DeepSpeed ZeRO stage and precision (the DeepSpeed config is derived)."""

    SECTION: ClassVar[str] = "distributed"

    zero_stage: int = 1
    """DeepSpeed ZeRO stage: 0 (replicated), 1 (optimizer state sharded), 2 (+ gradients)."""
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    """Compute precision of forward/backward."""
    precision_mode: Literal["autocast", "deepspeed"] = "autocast"
    """``autocast``: fp32 weights, torch autocast (AMP, as in the paper); ``deepspeed``:
    DeepSpeed's bf16/fp16 weights with fp32 master copies."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Collective backend; auto: nccl on GPUs, gloo on CPU."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """Where to train. ``cuda`` (the GPU recipes): stop, saying why, where torch sees no GPU;
    ``cpu``: the CPU over gloo (a dry run); ``auto``: CUDA when available, else the CPU with a
    warning that says why."""
    grad_reduce_dtype: Literal["fp32", "autocast"] = "fp32"
    """Under ``precision_mode: autocast``, the dtype gradients are reduced in across ranks:
    ``fp32`` (the paper's AMP + DDP), or ``autocast``: DeepSpeed's choice of the autocast dtype
    for Linear and Conv weights (half the traffic, bf16 rounding of the sums)."""
    cudnn_benchmark: bool = True
    """Let cuDNN time its convolution algorithms per input shape (training crops are fixed)."""
    tf32: bool = False
    """fp32 matmuls and convolutions on TF32 tensor cores (Ampere and newer): faster, 10-bit
    mantissa. Off by default, cuDNN's convolutions included (torch's default lets them)."""
    timeout_s: float = 1800.0
    """Seconds a collective may wait: a dead rank ends the job within this bound."""
    hang_timeout_s: float | None = None
    """End a rank that makes no training progress for this long (evaluation, checkpoints
    excluded), e.g. stuck in a data loader; null: no watchdog."""
    deepspeed_extra: dict[str, Any] = field(default_factory=dict)
    """Extra DeepSpeed config keys merged into the generated config (never batch keys)."""

    def __post_init__(self) -> None:
        self._require("zero_stage", self.zero_stage in (0, 1, 2), "0, 1 or 2")
        self._require("timeout_s", self.timeout_s > 0.0, "> 0")
        hang = self.hang_timeout_s
        self._require("hang_timeout_s", hang is None or hang > 0.0, "> 0 or null")


@dataclass(kw_only=True)
class CheckpointConfig(_Section):
    """When checkpoints are written, how many are kept, and how runs resume."""

    SECTION: ClassVar[str] = "checkpoint"

    enabled: bool = True
    """Write checkpoints at all."""
    every_steps: int = 500
    """Also checkpoint every N optimizer steps; 0: only at epoch ends."""
    every_epoch: bool = True
    """Checkpoint at the end of every epoch (after its evaluation)."""
    keep_last: int = 3
    """Checkpoints kept, newest first (the best one is kept in addition)."""
    keep_best: bool = True
    """Keep the checkpoint with the best validation top-1 as well."""
    resume: str = "auto"
    """``auto``: resume from the newest checkpoint in the run dir; ``never``; or a path."""
    skip_seen_batches: bool = True
    """Mid-epoch resume: read past the epoch's batches already trained on (exact data order)."""
    allow_changes: list[str] = field(default_factory=list)
    """Keys that may differ from the run's record on resume, e.g. ``[schedule.epochs]`` to
    extend a run (only keys that leave its checkpoints meaningful; see
    :mod:`adaact_dist.train.run_record`)."""

    def __post_init__(self) -> None:
        self._require("every_steps", self.every_steps >= 0, ">= 0")
        self._require("keep_last", self.keep_last >= 1, ">= 1")
        self._require("resume", bool(self.resume), "'auto', 'never' or a checkpoint path")


@dataclass(kw_only=True)
class LoggingConfig(_Section):
    """What rank 0 records and shows."""

    SECTION: ClassVar[str] = "logging"

    every_steps: int = 1
    """Write a CSV/TensorBoard row every N optimizer steps."""
    progress_bar: bool = True
    """tqdm bar on rank 0 (images/s, loss, lr, ETA)."""
    tensorboard: bool = True
    """Write TensorBoard events."""
    activation_every_steps: int = 50
    """Record per-layer activation variance every N steps (paper Fig. 1); 0: never."""
    plots: bool = True
    """Draw PNG plots at every evaluation and at the end."""
    noise_scale_every_steps: int = 0
    """Record the squared gradient norms of each micro-batch and of the whole batch every N
    steps (``noise_scale.csv``), from which the gradient noise scale is estimated; one
    process, ZeRO stage 0 and gradient accumulation only; 0: never."""

    def __post_init__(self) -> None:
        self._require("every_steps", self.every_steps >= 1, ">= 1")
        self._require("activation_every_steps", self.activation_every_steps >= 0, ">= 0")
        self._require("noise_scale_every_steps", self.noise_scale_every_steps >= 0, ">= 0")


@dataclass(kw_only=True)
class EvalConfig(_Section):
    """Validation: exact top-1/top-5 over the whole split, every sample once."""

    SECTION: ClassVar[str] = "eval"

    every_epochs: int = 1
    """Evaluate every N epochs (and always at the end)."""
    geometric_spacing: float = 0.0
    """Also evaluate once the steps since the last evaluation reach this fraction of all steps
    done (at least one): a geometric grid of steps that measures a step count, such as the
    steps to ``run.target_top1``, to this relative precision at any batch size; 0: off."""
    batch_size: int | None = None
    """Images per rank per evaluation forward; null: the training micro-batch."""

    def __post_init__(self) -> None:
        self._require("every_epochs", self.every_epochs >= 1, ">= 1")
        self._require("geometric_spacing", self.geometric_spacing >= 0.0, ">= 0")
        self._require("batch_size", self.batch_size is None or self.batch_size >= 1, ">= 1")


@dataclass(kw_only=True)
class TrainConfig(_Section):
    """A whole run: one attribute per YAML section."""

    SECTION: ClassVar[str] = ""

    run: RunConfig = field(default_factory=RunConfig)
    """Run directory, seed, early stop."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The network."""
    data: DataConfig = field(default_factory=DataConfig)
    """Shards, batch geometry, loaders."""
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    """Transforms and Mixup/CutMix."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Training loss."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Epochs and learning-rate schedule."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """Process group, ZeRO stage, precision."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpointing and resume."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metrics and plots."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Validation."""

    def __post_init__(self) -> None:
        if self.schedule.min_lr > self.optim.lr:
            raise ConfigValueError(
                "schedule.min_lr", self.schedule.min_lr, f"<= optim.lr ({self.optim.lr})"
            )
        if self.schedule.warmup_lr > self.optim.lr:
            raise ConfigValueError(
                "schedule.warmup_lr", self.schedule.warmup_lr, f"<= optim.lr ({self.optim.lr})"
            )
        name, stage = self.optim.name, self.distributed.zero_stage
        if OPTIMIZERS[name].per_tensor and stage != 0:
            raise ConfigValueError(
                "distributed.zero_stage",
                stage,
                f"0 with optim.name={name!r}: its trust ratios are per parameter tensor, and "
                f"ZeRO-{stage} hands the optimizer flat partitions; set distributed.zero_stage: 0",
            )
        if self.logging.noise_scale_every_steps and stage != 0:
            raise ConfigValueError(
                "distributed.zero_stage",
                stage,
                "0 with logging.noise_scale_every_steps: the gradient norms are read from whole "
                "gradients, which ZeRO-1/2 hand over in partitions",
            )
