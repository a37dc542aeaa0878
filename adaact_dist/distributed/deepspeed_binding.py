"""AdaAct under a DeepSpeed engine: ``deepspeed_initialize`` in place of ``deepspeed.initialize``.

::

    adaact_dist.distributed.init_distributed(timeout_s=600)
    optimizer = AdaAct(model.parameters(), model=model, lr=4.0, stats_sync_every=k)
    engine, *_ = adaact_dist.distributed.deepspeed_initialize(
        model=model, optimizer=optimizer, config=config
    )

It calls ``deepspeed.initialize`` and binds the engine to AdaAct. That changes no
DeepSpeed code: binding only wraps three methods of the engine's optimizer object
(``step``, ``state_dict``, ``load_state_dict``), each calling DeepSpeed's own first, and, for
fp16 at stage 0 only, the engine's ``backward`` (item 5). It:

0. Keeps DeepSpeed's construction-time ``step()`` from AdaAct: its fp16 wrapper (fp16,
   and bf16 at stage 0) steps the client optimizer once while it is built, with zero
   gradients on its own fp32 copies, to create state; AdaAct cannot know those copies
   yet, and the step carries nothing (no state is created, no step counted, no weight
   decay).
1. Maps the flat partitions (ZeRO 1/2, BF16_Optimizer) or fp32 copies (fp16/bf16 at
   stage 0) that DeepSpeed put in the optimizer's groups onto the model's parameters
   (:mod:`adaact_dist.distributed.deepspeed_layout`), so each element is scaled by ``D``
   of its layer and input feature. Only per-fragment records persist.
2. Gives AdaAct a :class:`TorchStatsSync` over the engine's data-parallel group (unless
   it already has a distributor): ``V`` is averaged in one all-reduce every k steps.
3. Ends AdaAct's step where DeepSpeed's ends, dropping the statistics of a step that
   DeepSpeed skips (fp16 overflow, a non-finite bf16 gradient norm): a skipped step
   neither folds statistics nor counts.
4. Adds AdaAct's replicated statistics (``V``, ``D``, step counts, sync phase) and the
   fragment layout to DeepSpeed's per-rank optimizer checkpoint, and restores the
   statistics on load, whichever path DeepSpeed loads by (also universal checkpoints
   written by :func:`adaact_dist.distributed.convert_to_universal`).
5. Scales the loss for fp16 at stage 0, where DeepSpeed 0.19's ``engine.backward`` does not
   while its fp16 wrapper divides by the scale
   (:func:`~adaact_dist.distributed.apply_stage0_loss_scale`; any optimizer needs it).

Bounding the engine's collectives and watching for hung ranks are the process group's
business (:func:`~adaact_dist.distributed.bound_engine_collectives`,
:class:`~adaact_dist.distributed.HangWatchdog`), for any optimizer.

ZeRO calls ``AdaAct.step()`` once per parameter group; the first call folds this step's
statistics (and syncs on a sync step), later calls find nothing pending, so the fold
happens exactly once per optimizer step.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import torch

from adaact_dist.distributed.deepspeed_layout import (
    FlatLayout,
    deepspeed_layouts,
    keeps_flat_checkpoint,
)
from adaact_dist.distributed.fp16_loss_scale import apply_stage0_loss_scale
from adaact_dist.distributed.op_builds import use_private_op_builds
from adaact_dist.distributed.torch_sync import TorchStatsSync
from adaact_dist.optim import AdaAct

# Entry that binding adds to each rank's DeepSpeed optimizer checkpoint.
CHECKPOINT_KEY = "adaact"
STATS = "activation_stats"
LAYOUTS = "layouts"
PARAM_SHAPES = "param_shapes"
FORMAT = "format"
FORMAT_VERSION = 1

_bound: weakref.WeakSet = weakref.WeakSet()


def deepspeed_initialize(*, model: torch.nn.Module, optimizer: AdaAct, **kwargs: Any) -> tuple:
    """``deepspeed.initialize(model=model, optimizer=optimizer, **kwargs)``, bound to AdaAct.

    Call it on every rank, like ``deepspeed.initialize``, whose tuple it returns
    ``(engine, engine_optimizer, dataloader, lr_scheduler)``; load checkpoints after it.
    """
    import deepspeed

    if not isinstance(optimizer, AdaAct):
        raise TypeError(
            f"Invalid optimizer={type(optimizer).__name__}: deepspeed_initialize runs AdaAct; "
            "call deepspeed.initialize for other optimizers"
        )
    use_private_op_builds()  # deepspeed.initialize builds the CPU comm op if nothing did
    with _construction_steps_skipped(optimizer):
        result = deepspeed.initialize(model=model, optimizer=optimizer, **kwargs)
    bind_deepspeed(result[0], optimizer)
    apply_stage0_loss_scale(result[0])
    return result


@contextlib.contextmanager
def _construction_steps_skipped(optimizer: AdaAct) -> Iterator[None]:
    """Every ``optimizer.step()`` inside the block returns at once (see item 0 above)."""
    optimizer.step = lambda closure=None: None
    try:
        yield
    finally:
        del optimizer.step  # the class's step again


def bind_deepspeed(engine: Any, optimizer: AdaAct) -> None:
    """Make ``engine``, built by ``deepspeed.initialize(optimizer=optimizer, ...)``, run AdaAct.

    :func:`deepspeed_initialize` calls it; it is the part after ``deepspeed.initialize``
    (items 1-4 above), before the first step and before ``engine.load_checkpoint``.
    """
    if not isinstance(optimizer, AdaAct):
        raise TypeError(
            f"Invalid optimizer={type(optimizer).__name__}: bind_deepspeed binds AdaAct"
        )
    if getattr(engine, "basic_optimizer", None) is not optimizer:
        raise ValueError(
            "This engine was not built with this optimizer: pass the AdaAct instance that "
            "went into deepspeed.initialize(optimizer=...)"
        )
    if optimizer in _bound:
        raise RuntimeError("This AdaAct is already bound to a DeepSpeed engine")
    if getattr(engine, "torch_autocast_z0_gradscaler", None) is not None:
        raise NotImplementedError(
            "DeepSpeed's torch_autocast with float16 at stage 0 skips steps through a "
            "GradScaler that AdaAct cannot observe; use the config's fp16 section instead"
        )
    wrapper = engine.optimizer
    layouts = deepspeed_layouts(wrapper, optimizer, engine.param_names)
    for layout in layouts:
        optimizer.map_flat_tensor(layout.flat, layout.fragments)
    _check_every_tensor_is_mapped(optimizer)
    _warn_about_clipping(engine)
    if optimizer.distributor is None:
        optimizer.distributor = TorchStatsSync(engine.seq_data_parallel_group)
    if wrapper is not optimizer:
        _end_each_step(wrapper, optimizer)
        if keeps_flat_checkpoint(wrapper):
            shapes = {name: list(p.shape) for p, name in engine.param_names.items()}
            _checkpoint_statistics(wrapper, optimizer, layouts, shapes)
    _bound.add(optimizer)


def _warn_about_clipping(engine: Any) -> None:
    """DeepSpeed 0.19 clips the global gradient norm at 1.0 unless its config says otherwise,
    so a hand-written config silently clips AdaAct's steps: say so, once per process."""
    clip = engine.gradient_clipping()
    if clip and clip > 0:
        warnings.warn(
            f"DeepSpeed clips the global gradient norm at {clip:g} before every AdaAct step "
            "(its config's gradient_clipping; DeepSpeed 0.19 uses 1.0 when the key is absent). "
            'Set "gradient_clipping": 0 in the DeepSpeed config to turn it off.',
            UserWarning,
            stacklevel=3,
        )


def _check_every_tensor_is_mapped(optimizer: AdaAct) -> None:
    strangers = [tuple(p.shape) for p in optimizer.unmapped_tensors()]
    if strangers:
        raise RuntimeError(
            f"DeepSpeed left {len(strangers)} tensor(s) in the optimizer that bind_deepspeed "
            f"could not map to model parameters (shapes {strangers[:5]})"
        )


def _end_each_step(wrapper: Any, optimizer: AdaAct) -> None:
    """Tell AdaAct where DeepSpeed's step ends.

    When DeepSpeed skips a step (overflow) it returns without calling AdaAct, whose
    statistics of that step must then be dropped; after a step that ran they were folded.
    """
    original = wrapper.step

    @functools.wraps(original)
    def step(*args, **kwargs):
        result = original(*args, **kwargs)
        optimizer.drop_pending_statistics()
        return result

    wrapper.step = step


def _checkpoint_statistics(
    wrapper: Any, optimizer: AdaAct, layouts: list[FlatLayout], shapes: dict[str, list[int]]
) -> None:
    """Put the statistics and layout in each rank's optimizer checkpoint; restore on load.

    DeepSpeed's elastic and universal paths keep only per-partition tensors, not the
    client optimizer's own ``state_dict()``, so the statistics travel separately.
    """
    records = [
        {
            "group": layout.group,
            "numel": layout.flat.numel(),
            "fragments": [
                (name, f.param_offset, f.flat_offset, f.numel)
                for name, f in zip(layout.names, layout.fragments)
            ],
        }
        for layout in layouts
    ]
    save, load = wrapper.state_dict, wrapper.load_state_dict
    signature = inspect.signature(load)

    @functools.wraps(save)
    def state_dict(*args, **kwargs):
        state = save(*args, **kwargs)
        state[CHECKPOINT_KEY] = {
            FORMAT: FORMAT_VERSION,
            STATS: optimizer.statistics_state_dict(),
            LAYOUTS: records,
            PARAM_SHAPES: shapes,
        }
        return state

    @functools.wraps(load)
    def load_state_dict(*args, **kwargs):
        result = load(*args, **kwargs)
        call = signature.bind(*args, **kwargs)
        call.apply_defaults()
        if call.arguments.get("load_optimizer_states", True):
            optimizer.load_statistics_state_dict(_saved_statistics(call.arguments))
        return result

    wrapper.state_dict = state_dict
    wrapper.load_state_dict = load_state_dict


def _saved_statistics(arguments: dict[str, Any]) -> dict[str, Any]:
    folder = arguments.get("checkpoint_folder")
    if folder:
        path = os.path.join(folder, "zero", "optimizer_state.pt")
        entry = torch.load(path, map_location="cpu", weights_only=False).get(CHECKPOINT_KEY)
        where = path
    else:
        # DeepSpeed reads only this rank's file unless the checkpoint is elastic; the
        # statistics are replicated, so any rank's copy will do.
        loaded = [state for state in arguments["state_dict_list"] if state is not None]
        entry = loaded[0].get(CHECKPOINT_KEY) if loaded else None
        where = "the ZeRO optimizer checkpoint"
    if entry is None:
        raise ValueError(
            f"{where} has no AdaAct statistics ({CHECKPOINT_KEY!r}): it was saved without "
            "adaact_dist.distributed.deepspeed_initialize, or converted with DeepSpeed's "
            "ds_to_universal "
            "(use adaact_dist.distributed.convert_to_universal / launch/convert_checkpoint.py)"
        )
    check_format(entry, where)
    return entry[STATS]


def check_format(entry: dict[str, Any], where: str) -> None:
    """Refuse AdaAct state of another layout than this version writes, naming both."""
    version = entry.get(FORMAT)
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{where} holds AdaAct state of format {version!r}; this version reads format "
            f"{FORMAT_VERSION}: resume it with the adaact-dist version that wrote it"
        )
