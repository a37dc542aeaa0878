"""Convert an AdaAct ZeRO-1/2 checkpoint to DeepSpeed's universal layout (any world size).

DeepSpeed refuses to load a ZeRO checkpoint on a different number of ranks; its way
round is the *universal* checkpoint, one folder per parameter holding the full
``fp32.pt`` and one file per optimizer state. DeepSpeed's converter (``ds_to_universal``)
reads Adam's ``exp_avg_sq`` by name and fails on AdaAct, but its loader takes whatever
state files it finds. So this module writes that layout itself, from the fragment
records that :func:`~adaact_dist.distributed.deepspeed_initialize` adds to each rank's checkpoint,
and carries AdaAct's replicated statistics (``V``, ``D``, step counts, sync phase) in
``zero/optimizer_state.pt``, where the binding restores them from.

Resume on N ranks with ``"checkpoint": {"load_universal": true}`` in the DeepSpeed
config and ``engine.load_checkpoint(save_dir)`` (the tag comes from
``latest_universal``). Stage-0 checkpoints need no conversion: their optimizer state is
whole and loads on any number of ranks.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adaact_dist._files import atomic_write_text
from adaact_dist.distributed.deepspeed_binding import (
    CHECKPOINT_KEY,
    LAYOUTS,
    PARAM_SHAPES,
    check_format,
)

_OPTIM_FILE = re.compile(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
_SHARDED = ("base_optimizer_state", "single_partition_of_fp32_groups", "param_slice_mappings")


def convert_to_universal(
    checkpoint_dir: str | Path, output_dir: str | Path | None = None, *, write_latest: bool = True
) -> Path:
    """Write the universal form of ``checkpoint_dir`` (``<save_dir>/<tag>``).

    Args:
        checkpoint_dir: a tag folder written by ``engine.save_checkpoint`` with AdaAct bound.
        output_dir: where to write; default ``<save_dir>/<tag>_universal``.
        write_latest: give the output's parent a ``latest_universal`` file naming it, for
            ``engine.load_checkpoint`` without a tag.

    Returns:
        The output folder.
    """
    source = Path(checkpoint_dir)
    target = Path(output_dir) if output_dir else source.with_name(source.name + "_universal")
    whole = _WholeParameters()
    first: dict[str, Any] | None = None
    for path in _optimizer_files(source):
        state = _read_rank_state(path)
        first = first or state
        whole.add(state)
    shapes = first[CHECKPOINT_KEY][PARAM_SHAPES]
    whole.check_complete(shapes, source)
    whole.write(target / "zero", shapes)
    common = {key: value for key, value in first.items() if key not in _SHARDED}
    common["param_groups"] = first["base_optimizer_state"]["param_groups"]
    torch.save(common, target / "zero" / "optimizer_state.pt")
    for model_states in sorted(source.glob("mp_rank_*_model_states.pt")):
        shutil.copy2(model_states, target / model_states.name)
    if write_latest:
        atomic_write_text(target.parent / "latest_universal", target.name)
    return target


def _read_rank_state(path: Path) -> dict[str, Any]:
    """One rank's optimizer state, refused unless AdaAct's binding wrote it with groups."""
    state = torch.load(path, map_location="cpu", weights_only=False)["optimizer_state_dict"]
    entry = state.get(CHECKPOINT_KEY)
    if entry is None:
        raise ValueError(
            f"{path} has no AdaAct layout ({CHECKPOINT_KEY!r}): save the checkpoint with "
            "the engine built by adaact_dist.distributed.deepspeed_initialize"
        )
    check_format(entry, str(path))
    if not isinstance(state["base_optimizer_state"], dict):
        raise NotImplementedError(
            f"{path} is an elastic ZeRO checkpoint, which keeps no parameter groups: "
            "save with zero_optimization.elastic_checkpoint=false to convert it"
        )
    return state


@dataclass
class _WholeParameters:
    """Each parameter's fp32 master and flat optimizer states, put together from the ranks'
    fragments; scalar states (step counts) as found."""

    flat: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    covered: dict[str, int] = field(default_factory=dict)
    scalars: dict[str, Any] = field(default_factory=dict)

    def add(self, state: dict[str, Any]) -> None:
        """Copy one rank's fragments into place, by the binding's layout records."""
        entry, base = state[CHECKPOINT_KEY], state["base_optimizer_state"]
        shapes = entry[PARAM_SHAPES]
        for record in entry[LAYOUTS]:
            group = record["group"]
            flat_states = dict(base["state"].get(group, {}))
            flat_states["fp32"] = state["single_partition_of_fp32_groups"][group]
            for name, param_offset, flat_offset, numel in record["fragments"]:
                size = int(torch.Size(shapes[name]).numel())
                slots = self.flat.setdefault(name, {})
                for key, value in flat_states.items():
                    if torch.is_tensor(value) and value.dim() == 1:
                        if key not in slots:
                            slots[key] = torch.zeros(size, dtype=torch.float32)
                        run = value[flat_offset : flat_offset + numel]
                        slots[key][param_offset : param_offset + numel] = run
                    else:
                        self.scalars[name] = value
                self.covered[name] = self.covered.get(name, 0) + numel

    def check_complete(self, shapes: dict[str, Any], source: Path) -> None:
        incomplete = [
            n for n, shape in shapes.items() if self.covered.get(n) != torch.Size(shape).numel()
        ]
        if incomplete:
            raise ValueError(
                f"The ranks' fragments of {incomplete[:5]} do not add up to whole parameters: "
                f"{source} is missing optimizer files of some ranks"
            )

    def write(self, zero: Path, shapes: dict[str, Any]) -> None:
        """One folder per parameter, one file per state: DeepSpeed's universal layout."""
        for name, slots in self.flat.items():
            folder = zero / name
            folder.mkdir(parents=True, exist_ok=True)
            for key, flat in slots.items():
                torch.save({"param": flat.view(shapes[name])}, folder / f"{key}.pt")
            if name in self.scalars:
                torch.save(self.scalars[name], folder / "step.pt")


def _optimizer_files(source: Path) -> list[Path]:
    found = {}
    for path in source.iterdir():
        match = _OPTIM_FILE.match(path.name)
        if not match:
            continue
        if int(match.group(2)) != 0:
            raise NotImplementedError(
                f"{path.name}: tensor- or pipeline-parallel checkpoints are not supported"
            )
        found[int(match.group(1))] = path
    if not found:
        raise FileNotFoundError(
            f"No ZeRO optimizer files (*zero_pp_rank_*_optim_states.pt) in {source}: pass a "
            "tag folder; a stage-0 checkpoint needs no conversion, it loads on any world size"
        )
    if sorted(found) != list(range(len(found))):
        raise ValueError(f"{source} lacks the optimizer files of some ranks: found {sorted(found)}")
    return [found[rank] for rank in range(len(found))]
