"""Command line of ``launch/train_imagenet.py``: parse, build, run, close."""

from __future__ import annotations

import argparse
import os
import sys

from adaact_dist.train.config import ConfigValueError
from adaact_dist.train.config_io import ConfigError, config_error, dump_config, load_config
from adaact_dist.train.plan import make_plan

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def add_override_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE ...``, repeatable; :func:`overrides_of` flattens what it collects."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help=help,
    )


def overrides_of(args: argparse.Namespace) -> list[str]:
    """Every ``--set`` item, in the order given."""
    return [item for group in args.overrides for item in group]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train an image classifier with AdaAct on DeepSpeed (see configs/).",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="a YAML recipe: a path, or a bare name looked up in configs/ (a2_resnet50)",
    )
    add_override_option(
        parser, "override a config value, e.g. --set optim.lr=2.0 data.root=/data/imagenet-wds"
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (and what it means on this world size) and exit",
    )
    # The deepspeed launcher appends --local_rank=N; LOCAL_RANK in the environment says the same.
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS
    )
    return parser


def _is_rank0() -> bool:
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = overrides_of(args)
    try:
        config = load_config(args.config, overrides)
        if args.print_config:
            world_size = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
            try:
                plan = make_plan(config, world_size)
            except ConfigValueError as error:
                raise config_error(config, error) from None
            derived = ", ".join(
                f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in plan.as_dict().items()
            )
            print(dump_config(config) + f"# derived: {derived}")
            return EXIT_OK
    except ConfigError as error:
        if _is_rank0():  # every rank read the same file: one message is enough
            print(f"config error: {error}", file=sys.stderr)
        return EXIT_CONFIG

    from adaact_dist.train.logger import get_logger
    from adaact_dist.train.run_summary import StopReason
    from adaact_dist.train.trainer import TrainingDiverged, train

    log = get_logger()
    try:
        summary = train(config)
    except ConfigError as error:
        if _is_rank0():
            print(f"config error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except TrainingDiverged as error:
        log.error("%s", error)
        return EXIT_FAILED
    return EXIT_FAILED if summary.stop_reason == StopReason.ERROR else EXIT_OK
