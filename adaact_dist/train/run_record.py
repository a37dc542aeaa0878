"""The run directory's record: the config that started it, every later start, and the guard.

A run directory holds one run. Its first start writes ``config.yaml`` (the resolved config),
``deepspeed.json`` and ``plan.json``; no later start overwrites them. Every start, the first
included, appends one line to ``starts.jsonl``: time, world size, launcher, command line,
overrides, the resolved config and what changed.

Starting again in a directory that has a record compares the new resolved config with the
latest start's. Keys that change what the checkpoints mean must match, or the start stops
before any work (:class:`~adaact_dist.train.config_io.ConfigError`, exit status 2) with
every differing key as ``old -> new``:

- :data:`FREE` keys may change freely (where data lives, workers, cadences, logging,
  evaluation, checkpoint retention, timeouts, arithmetic settings that leave the checkpoints
  alike: the gradient reduction dtype, TF32, cuDNN's search; the world size is not a config
  key, and a checkpoint of another world size is converted on resume);
- :data:`ALLOWABLE` keys change what the run does from here on, but leave its checkpoints
  meaningful: they may change when ``checkpoint.allow_changes`` names them (extending
  ``schedule.epochs`` or ``schedule.max_steps``, moving to the DALI backend on a GPU cluster);
- every other key (model, optimizer and its hyperparameters, global batch, image size, the
  schedule's shape, loss, augmentation, seed, ZeRO stage, precision) must match: its
  checkpoints belong to another run, which gets its own ``run.output_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from adaact_dist.train.config import ConfigValueError, TrainConfig
from adaact_dist.train.config_io import ConfigError, config_to_dict, dump_config

CONFIG = "config.yaml"
STARTS = "starts.jsonl"

FREE = (
    "run.name",
    "run.output_dir",
    "run.stop_after_steps",
    "model.channels_last",
    "model.compile",
    "data.root",
    "data.num_workers",
    "data.strict",
    "data.micro_batch_size",
    "data.max_micro_batch_size",
    "distributed.backend",
    "distributed.device",
    "distributed.timeout_s",
    "distributed.hang_timeout_s",
    "distributed.grad_reduce_dtype",
    "distributed.cudnn_benchmark",
    "distributed.tf32",
    "checkpoint",
    "logging",
    "eval",
)
"""Keys (or whole sections) that do not change what the checkpoints mean."""

ALLOWABLE = (
    "schedule.epochs",
    "schedule.max_steps",
    "data.backend",
    "data.val_split",
    "distributed.deepspeed_extra",
)
"""Keys that may change on resume when ``checkpoint.allow_changes`` names them."""


_ABSENT = object()  # a key one of two configs does not have


def _flatten(config: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {
        f"{section}.{key}": value for section, body in config.items() for key, value in body.items()
    }


def _in(key: str, keys: tuple[str, ...]) -> bool:
    return key in keys or key.split(".")[0] in keys


def _defaults() -> dict[str, Any]:
    """Every key's default value, dotted (keys whose default is built by a factory included)."""
    defaults = {}
    for section in dataclasses.fields(TrainConfig):
        for field in dataclasses.fields(section.default_factory):
            if field.default is not dataclasses.MISSING:
                value = field.default
            elif field.default_factory is not dataclasses.MISSING:
                value = field.default_factory()
            else:
                continue
            defaults[f"{section.name}.{field.name}"] = (
                list(value) if isinstance(value, tuple) else value
            )
    return defaults


def guarded_differences(old: Mapping, new: Mapping) -> dict[str, tuple[Any, Any]]:
    """``{key: (old, new)}`` for every key outside :data:`FREE` whose value differs.

    A key that the old record lacks because a later version of this project added it is no
    difference while it keeps its default (new keys default to the earlier behaviour), so an
    upgrade does not strand the runs it finds.
    """
    before, after = _flatten(old), _flatten(new)
    defaults = _defaults()
    for key, value in after.items():
        if key not in before and key in defaults and value == defaults[key]:
            before[key] = value
    return {
        key: (before.get(key, _ABSENT), after.get(key, _ABSENT))
        for key in sorted(before.keys() | after.keys())
        if not _in(key, FREE) and before.get(key, _ABSENT) != after.get(key, _ABSENT)
    }


class RunRecord:
    """The record of one run directory (read on every rank, written by rank 0 only)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    @property
    def started(self) -> bool:
        return (self.run_dir / CONFIG).is_file()

    def last_config(self) -> dict[str, Any]:
        """The resolved config of the latest start (the first start's ``config.yaml`` if the
        starts file is missing or ends in a torn line)."""
        starts = self.run_dir / STARTS
        if starts.is_file():
            for line in reversed(starts.read_text(encoding="utf-8").splitlines()):
                try:
                    return json.loads(line)["config"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        try:
            loaded = yaml.safe_load((self.run_dir / CONFIG).read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ConfigError(
                f"{self.run_dir / CONFIG} is damaged ({error}); it records how this run "
                "started: restore it, or start the run anew in another run.output_dir"
            ) from None
        return loaded or {}

    def check(self, config: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Refuse a start whose config changes what this run's checkpoints mean.

        Returns the guarded keys that change with ``checkpoint.allow_changes``' consent.
        """
        allowed = tuple(config.checkpoint.allow_changes)
        unknown = [key for key in allowed if key not in ALLOWABLE]
        if unknown:
            raise ConfigValueError(
                "checkpoint.allow_changes", list(allowed), f"a list of keys among {list(ALLOWABLE)}"
            )
        if not self.started:
            return {}
        changed = guarded_differences(self.last_config(), config_to_dict(config))
        refused = {key: values for key, values in changed.items() if key not in allowed}
        if refused:
            raise ConfigError(_refusal(self.run_dir, refused))
        return changed

    def record_start(
        self,
        config: TrainConfig,
        *,
        world_size: int,
        launcher: str,
        plan: dict[str, Any],
        deepspeed_config: dict[str, Any],
        changed: dict[str, tuple[Any, Any]],
    ) -> None:
        """The first start writes the config files; every start appends its line (rank 0)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.started:
            (self.run_dir / "deepspeed.json").write_text(json.dumps(deepspeed_config, indent=1))
            (self.run_dir / "plan.json").write_text(json.dumps(plan, indent=1))
            (self.run_dir / CONFIG).write_text(dump_config(config))  # last: marks the record
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "world_size": world_size,
            "launcher": launcher,
            "command": shlex.join(sys.argv),
            "overrides": {
                key: source
                for key, source in getattr(config, "config_sources", {}).items()
                if source.startswith("--set")
            },
            "changed": {key: [_record(v) for v in values] for key, values in changed.items()},
            "plan": plan,
            "config": config_to_dict(config),
        }
        with open(self.run_dir / STARTS, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")


def _refusal(run_dir: Path, refused: dict[str, tuple[Any, Any]]) -> str:
    width = max(len(key) for key in refused)
    lines = [
        f"{run_dir} holds a run started with another config: {len(refused)} key(s) that "
        "change what its checkpoints mean differ (old -> new):"
    ]
    lines += [
        f"  {key:<{width}}  {_show(old)} -> {_show(new)}" for key, (old, new) in refused.items()
    ]
    lines.append(f"To start a new run, give it its own directory: --set run.output_dir={run_dir}-2")
    allowable = [key for key in refused if key in ALLOWABLE]
    if allowable:
        listed = ",".join(allowable)
        lines.append(
            f"To continue this run with the new {listed}: --set checkpoint.allow_changes=[{listed}]"
        )
    return "\n".join(lines)


def _record(value: Any) -> Any:
    return None if value is _ABSENT else value


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value)
