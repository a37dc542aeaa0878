"""Convert an AdaAct ZeRO-1/2 checkpoint so that it resumes on any number of ranks.

    python launch/convert_checkpoint.py CHECKPOINTS/global_step300

then resume on any number of ranks with ``"checkpoint": {"load_universal": true}`` in the
DeepSpeed config and ``engine.load_checkpoint("CHECKPOINTS")``.

Writes CHECKPOINTS/global_step300_universal (DeepSpeed's universal layout, with
AdaAct's momentum and activation statistics) and CHECKPOINTS/latest_universal.
Use this instead of DeepSpeed's ds_to_universal, which knows only Adam's state.
"""

from __future__ import annotations

import argparse

from adaact_dist.distributed import convert_to_universal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a tag folder written by engine.save_checkpoint")
    parser.add_argument("--output", help="default: <checkpoint>_universal beside it")
    args = parser.parse_args()
    print(convert_to_universal(args.checkpoint, args.output))


if __name__ == "__main__":
    main()
