"""One rank of the distributed tests; ``conftest.py`` starts it with the deepspeed
launcher, the repository on PYTHONPATH (for ``tests.*``). Each suite runs many engines in one
process group (launching is the slow part) and rank 0 saves everything the tests compare to
``<out>/<suite>.pt``.

``--device cuda`` runs a suite on this rank's GPU over NCCL (the ``gpu_suite`` fixture
launches the ``gpu1`` and ``gpu2`` suites so); the default is the CPU and gloo.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from adaact_dist.distributed import (
    HangWatchdog,
    TorchStatsSync,
    bound_engine_collectives,
    deepspeed_initialize,
    init_distributed,
)
from adaact_dist.distributed.deepspeed_binding import bind_deepspeed
from adaact_dist.train.ds_config import autocast_section
from tests.distributed.common import (
    ds_config,
    make_model,
    make_optimizer,
    micro_batch,
    named_params,
)

OVERFLOW_STEP = 999  # data seed of the step that DeepSpeed must skip
BF16 = {"bf16": {"enabled": True, "check_grad_overflow": True}}
BF16_CONFIGS = {  # stage -> config: unfused (stage 0), BF16_Optimizer (1), ZeRO (2)
    0: BF16,
    1: {**BF16, "data_types": {"grad_accum_dtype": "fp32"}},
    2: BF16,
}
SCENARIO_MARK = "[scenario] "  # conftest.py reads it to name a failing scenario
FP16 = {"enabled": True, "initial_scale_power": 8}  # dynamic loss scaling from 2**8
# bf16 runs use no BatchNorm: after DeepSpeed's bf16 cast, BatchNorm's forward on this CPU
# build fails with "expected scalar type BFloat16 but found Float".
BF16_S1 = {**BF16_CONFIGS[1], "batchnorm": False}


class CountingSync:
    """The distributor the binding attached, counting its collectives."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def average_(self, flat: torch.Tensor) -> None:
        self.calls += 1
        self.inner.average_(flat)


class Run:
    """An engine with AdaAct bound, stepped on the shared data, recording what tests check."""

    def __init__(self, stage, *, gas=1, batchnorm=True, k=1, other_rule="sgd", bind=True, **cfg):
        # on DeepSpeed's device before AdaAct is built, as the trainer does (a no-op on CPU)
        self.model = make_model(batchnorm, seed=0).to(
            deepspeed.get_accelerator().current_device_name()
        )
        self.optimizer = make_optimizer(self.model, stats_sync_every=k, other_rule=other_rule)
        config = ds_config(stage, gas, **cfg)
        initialize = deepspeed_initialize if bind else deepspeed.initialize
        self.engine, *_ = initialize(model=self.model, optimizer=self.optimizer, config=config)
        if bind:
            self.optimizer.distributor = CountingSync(self.optimizer.distributor)
        self.gas, self.rank = gas, dist.get_rank()
        first = next(self.model.parameters())  # where and in what DeepSpeed put the model
        self.dtype, self.device = first.dtype, first.device
        self.identical: list[bool] = []
        self.second_moments: dict[int, torch.Tensor] = {}
        self.preconds: dict[int, torch.Tensor] = {}

    def steps(self, first: int, last: int, overflow_before: int | None = None) -> Run:
        for step in range(first, last + 1):
            if step == overflow_before:
                self._one(OVERFLOW_STEP, poison=True)
            self._one(step)
            self.identical.append(_identical_on_all_ranks(self.model))
            self.second_moments[step] = self.optimizer._table.second_moment.clone()
            self.preconds[step] = self.optimizer._table.precond.clone()
        return self

    def _one(self, step: int, poison: bool = False) -> None:
        for j in range(self.gas):
            x, y = micro_batch(step, self.rank * self.gas + j)
            output = self.engine(x.to(self.device, self.dtype)).float()
            loss = F.cross_entropy(output, y.to(self.device))
            if poison and self.rank == dist.get_world_size() - 1:
                loss = loss * float("inf")
            self.engine.backward(loss)
            self.engine.step()

    def record(self) -> dict:
        optimizer = self.optimizer
        state_bytes = sum(
            t.numel() * t.element_size()
            for state in optimizer.state.values()
            for t in state.values()
            if torch.is_tensor(t)
        )
        pieces = [piece for _, ps in optimizer._flat.values() for piece in ps]
        return {
            "wrapper": type(self.engine.optimizer).__name__,
            "params": named_params(self.model),
            "flat": [p.detach().clone() for g in optimizer.param_groups for p in g["params"]],
            "identical": self.identical,
            "second_moments": self.second_moments,
            "preconds": self.preconds,
            "stats_step": optimizer._stats_step,
            "layer_steps": [layer.step for layer in optimizer.layers],
            "state_steps": [float(s["step"]) for s in optimizer.state.values() if "step" in s],
            "state_bytes": state_bytes,
            "table_bytes": 3 * optimizer._table.second_moment.numel() * 4,
            "partial_rows": sum(p.kind == "weight" and len(p.shape) == 1 for p in pieces),
            "skipped": self.engine.skipped_steps,
            "loss_scale": getattr(self.engine.optimizer, "loss_scale", None),
            "sync_calls": getattr(optimizer.distributor, "calls", None),
        }


def overflow_pair(name: str, stage: int, **config) -> dict:
    """Records ``name`` (steps 1-5) and ``name_overflow`` (the same with an overflow step that
    DeepSpeed must skip before step 3), both without BatchNorm, and ``name_scale_before_skip``.

    A skipped fp16 step halves the loss scale (ZeRO's hysteresis keeps it for one overflow),
    which changes the fp16 rounding of later gradients where they are subnormal: the run
    without the overflow is given the same scale from step 3, so the two must agree bit for bit.
    """
    skipped = Run(stage, batchnorm=False, **config).steps(1, 5, overflow_before=3)
    straight = Run(stage, batchnorm=False, **config).steps(1, 2)
    scale = getattr(straight.engine.optimizer, "loss_scale", None)
    if scale is not None:
        straight.engine.optimizer.loss_scale = skipped.engine.optimizer.loss_scale
    return {
        name: straight.steps(3, 5).record(),
        f"{name}_overflow": skipped.record(),
        f"{name}_scale_before_skip": scale,
    }


def _identical_on_all_ranks(model) -> bool:
    flat = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])
    copies = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(copies, flat)
    return all(torch.equal(copies[0], c) for c in copies[1:])


def _error(fn) -> str:
    try:
        fn()
    except Exception as error:  # the tests check type and message
        return f"{type(error).__name__}: {error}"
    return "no error"


@contextlib.contextmanager
def scenario(name: str) -> Iterator[str]:
    """Announce a scenario before it starts, so that a failure or a hang of the shared launch is
    reported by the scenario's name (``conftest.py`` reads the marks); yields the name."""
    print(f"{SCENARIO_MARK}{name}", flush=True)
    yield name


def suite_main(out: Path) -> dict:
    results = {}
    for stage in (0, 1, 2):
        rule = "sgd_momentum" if stage == 1 else "sgd"
        with scenario(f"k1_s{stage}") as key:
            results[key] = Run(stage, other_rule=rule).steps(1, 6).record()
        with scenario(f"k3_s{stage}") as key:
            results[key] = Run(stage, k=3).steps(1, 7).record()
    for stage in (1, 2):
        with scenario(f"k1_s{stage}_gas2") as key:
            results[key] = Run(stage, gas=2).steps(1, 6).record()
        with scenario(f"k1_s{stage}_nobn") as key:
            results[key] = Run(stage, batchnorm=False).steps(1, 6).record()
    offload = {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}
    with scenario("k1_s2_offload") as key:
        results[key] = Run(2, zero_force_ds_cpu_optimizer=False, **offload).steps(1, 6).record()

    results["fp16_native"] = _accept_fp16()
    precisions = {"bf16": BF16_CONFIGS, "fp16": dict.fromkeys(BF16_CONFIGS, {"fp16": FP16})}
    for name, configs in precisions.items():
        for stage, config in configs.items():
            with scenario(f"{name}_s{stage}_overflow"):
                results.update(overflow_pair(f"{name}_s{stage}", stage, **config))
    with scenario("fp16_s0_deepspeed_scales") as key, _deepspeed_scaling_at_stage0():
        results[key] = Run(0, batchnorm=False, fp16=FP16).steps(1, 5).record()

    checkpointed = {"s0": (0, {}), "s1": (1, {}), "s2": (2, {}), "bf16_s1": (1, BF16_S1)}
    for name, (stage, config) in checkpointed.items():
        # save at step 3 and go on; resume from step 3 in a fresh engine
        save_dir = out / f"ckpt_{name}"
        with scenario(f"ckpt_{name}_straight") as key:
            first = Run(stage, k=2, **config).steps(1, 3)
            first.engine.save_checkpoint(str(save_dir), tag="step3")
            results[key] = first.steps(4, 6).record()
        with scenario(f"ckpt_{name}_resumed") as key:
            resumed = Run(stage, k=2, **config)
            resumed.model.apply(_scramble)
            resumed.engine.load_checkpoint(str(save_dir), tag="step3")
            results[key] = resumed.steps(4, 6).record()

    with scenario("refusals"):
        results["refuse_round_robin"] = _error(
            lambda: Run(2, zero_optimization={"round_robin_gradients": True})
        )
        results["refuse_stage3"] = _error(lambda: Run(3))
        results["refuse_elastic"] = _error(
            lambda: Run(1, zero_optimization={"elastic_checkpoint": True})
        )
        bound = Run(1)
        results["bind_twice"] = _error(lambda: bind_deepspeed(bound.engine, bound.optimizer))
        stranger = make_optimizer(make_model())
        results["bind_stranger"] = _error(lambda: bind_deepspeed(bound.engine, stranger))
        results["unbound_zero"] = _error(lambda: Run(1, bind=False).steps(1, 1))
        # bf16 at stage 0 (FP16_UnfusedOptimizer) steps AdaAct while deepspeed.initialize runs
        results["unbound_bf16"] = _error(
            lambda: Run(0, bind=False, batchnorm=False, **BF16_CONFIGS[0])
        )
    with scenario("clipping_warnings"):
        results["clipping_warnings"] = _clipping_warnings(drop_key=True)
        results["no_clipping_warnings"] = _clipping_warnings(drop_key=False)
    # last: DeepSpeed's torch_autocast sets a process-wide flag that the ZeRO runs above would see
    for stage in (1, 2):
        for reduce_dtype in ("fp32", "autocast"):
            with scenario(f"autocast_s{stage}_reduce_{reduce_dtype}") as key:
                autocast = autocast_section(True, "bfloat16", reduce_dtype)
                results[key] = _reduce_dtypes(Run(stage, torch_autocast=autocast))
    return results


def _reduce_dtypes(run: Run) -> dict:
    """The dtypes the engine's ZeRO optimizer reduces gradients in (its buckets, and each
    weight's), after one step."""
    run.steps(1, 1)
    zero = run.engine.optimizer
    return {
        "buckets": sorted(str(dtype) for dtype in zero.ipg_buckets),
        "weights": sorted({str(zero.get_param_comm_dtype(p)) for p in run.model.parameters()}),
        "params": named_params(run.model),
    }


def _accept_fp16() -> bool:
    """Whether DeepSpeed's accelerator has fp16 here; where its CPU accelerator refuses it (a CPU
    without AVX512-FP16, where torch computes fp16 in its reference kernels), tell it otherwise,
    so that DeepSpeed's fp16 path (loss scaling, overflow skips, unscaling) runs on every CPU."""
    accelerator = deepspeed.get_accelerator()
    native = accelerator.is_fp16_supported()
    if not native:
        type(accelerator).is_fp16_supported = lambda self: True
    return native


@contextlib.contextmanager
def _deepspeed_scaling_at_stage0() -> Iterator[None]:
    """Engines built inside scale the loss at stage 0 themselves, as the fix proposed upstream
    for deepspeedai/DeepSpeed#8393 does, so ``apply_stage0_loss_scale`` must leave them alone."""
    engine_class = deepspeed.runtime.engine.DeepSpeedEngine
    original = engine_class.backward

    def backward(self, loss, *args, **kwargs):
        return original(self, loss * self.optimizer.loss_scale, *args, **kwargs)

    engine_class.backward = backward
    try:
        yield
    finally:
        engine_class.backward = original


def _clipping_warnings(*, drop_key: bool) -> list[str]:
    """The binding's warnings about gradient clipping for a config without the key (DeepSpeed
    0.19 then clips at 1.0) or with it set to 0."""
    model = make_model()
    optimizer = make_optimizer(model)
    config = ds_config(1)
    if drop_key:
        del config["gradient_clipping"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deepspeed_initialize(model=model, optimizer=optimizer, config=config)
    return [str(w.message) for w in caught if "gradient norm" in str(w.message)]


def suite_gpu(out: Path) -> dict:
    """One GPU per rank (NCCL): ZeRO 0/1/2 in fp32, bf16 and fp16 with dynamic loss scaling,
    each low-precision run also with an overflow step. Accumulation (2 on one rank, 1 on two)
    makes the global batch of the 2-rank CPU suite, so the same one-process controls apply."""
    results = {"fp16_supported": deepspeed.get_accelerator().is_fp16_supported()}
    gas = 2 // dist.get_world_size()
    for stage in (0, 1, 2):
        results[f"fp32_s{stage}"] = Run(stage, gas=gas).steps(1, 6).record()
        configs = {"bf16": BF16_CONFIGS[stage]}
        if results["fp16_supported"]:
            configs["fp16"] = {"fp16": FP16}
        for name, config in configs.items():
            results.update(overflow_pair(f"{name}_s{stage}", stage, gas=gas, **config))
    return results


def suite_one_rank(out: Path) -> dict:
    """2 -> 1: resume 2-rank ZeRO-1 checkpoints (fp32, and bf16 with BF16_Optimizer;
    converted) on one rank with accumulation 2; and the 1-rank run whose step-3
    checkpoint the 2-rank resume starts from."""
    results = {}
    universal = {"checkpoint": {"load_universal": True}}
    for name, config in (("s1", {}), ("bf16_s1", BF16_S1)):
        resumed = Run(1, gas=2, k=2, **config, **universal)
        resumed.model.apply(_scramble)
        resumed.engine.load_checkpoint(str(out / f"ckpt_{name}"))
        results[f"from_two_{name}"] = resumed.steps(4, 6).record()
    first = Run(1, gas=2, k=2).steps(1, 3)
    first.engine.save_checkpoint(str(out / "ckpt_one"), tag="step3")
    results["straight"] = first.steps(4, 6).record()
    return results


def suite_two_from_one(out: Path) -> dict:
    resumed = Run(1, k=2, checkpoint={"load_universal": True})
    resumed.model.apply(_scramble)
    resumed.engine.load_checkpoint(str(out / "ckpt_one"))
    return {"from_one": resumed.steps(4, 6).record()}


def suite_ddp(out: Path) -> dict:
    """No DeepSpeed: DistributedDataParallel and TorchStatsSync under torchrun."""
    results = {}
    rank = dist.get_rank()
    for k, steps in ((1, 6), (3, 7)):
        model = make_model()
        sync = CountingSync(TorchStatsSync())
        optimizer = make_optimizer(model, stats_sync_every=k, distributor=sync)
        ddp = DistributedDataParallel(model)
        identical, second_moments = [], {}
        for step in range(1, steps + 1):
            x, y = micro_batch(step, rank)
            F.cross_entropy(ddp(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            identical.append(_identical_on_all_ranks(model))
            second_moments[step] = optimizer._table.second_moment.clone()
        results[f"k{k}"] = {
            "params": named_params(model),
            "identical": identical,
            "second_moments": second_moments,
            "sync_calls": sync.calls,
        }
    return results


def suite_failure(out: Path, mode: str, hang_timeout_s: float | None) -> dict:
    model = make_model()
    optimizer = make_optimizer(model)
    engine, *_ = deepspeed_initialize(model=model, optimizer=optimizer, config=ds_config(1))
    bound_engine_collectives(engine)
    watchdog = HangWatchdog(hang_timeout_s) if hang_timeout_s else None
    rank = dist.get_rank()
    for step in range(1, 50):
        if watchdog is not None:
            watchdog.pet()
        if step == 3 and rank == 1:
            print(f"rank 1 {mode}s on purpose at step {step}", flush=True)
            if mode == "raise":
                raise RuntimeError("rank 1 fails on purpose")
            time.sleep(3600)
        x, y = micro_batch(step, rank)
        engine.backward(F.cross_entropy(engine(x), y))
        engine.step()
    return {}


def _to_cpu(value):
    """``value`` with every tensor moved to the CPU, so that any process can load the results."""
    if torch.is_tensor(value):
        return value.cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return value


def _scramble(module) -> None:
    """Make sure a resume really loads the weights, rather than starting from equal ones."""
    for p in module.parameters(recurse=False):
        p.data.normal_()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--suite", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--pg-timeout", type=float, default=120.0)
    parser.add_argument("--hang-timeout", type=float, default=None)
    parser.add_argument("--local_rank", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", args.local_rank)))
        # fp32 runs are compared with fp32 CPU controls: no TF32 in convolutions or matmuls
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        init_distributed(timeout_s=args.pg_timeout, backend="nccl")
    else:
        init_distributed(timeout_s=args.pg_timeout)
    torch.set_num_threads(1)
    if args.suite.startswith("failure_"):
        suite_failure(args.out, args.suite.removeprefix("failure_"), args.hang_timeout)
        return
    suites = {
        "main": suite_main,
        "one_rank": suite_one_rank,
        "two_from_one": suite_two_from_one,
        "ddp": suite_ddp,
        "gpu1": suite_gpu,
        "gpu2": suite_gpu,
    }
    results = _to_cpu(suites[args.suite](args.out))
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, results)
    if dist.get_rank() == 0:
        torch.save(gathered, args.out / f"{args.suite}.pt")
    dist.barrier()


if __name__ == "__main__":
    main()
