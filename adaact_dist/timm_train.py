"""Run timm's ``train.py`` (or any script that picks optimizers by timm name) with AdaAct.

::

    python -m adaact_dist.timm_train path/to/timm/train.py --opt adaact --lr 0.5 ...
    torchrun --nproc_per_node 2 -m adaact_dist.timm_train path/to/timm/train.py --opt adaact ...

It registers ``"adaact"`` in timm's optimizer registry, then runs the script as
``__main__`` with the arguments that follow it, as ``python path/to/train.py ...`` would,
so the script needs no edit.
"""

from __future__ import annotations

import os
import runpy
import sys

from adaact_dist.timm_registry import register

USAGE = "usage: python -m adaact_dist.timm_train SCRIPT.py [SCRIPT ARGUMENTS ...]"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(f"{USAGE}\n\n{__doc__.splitlines()[0]}", file=sys.stdout if argv else sys.stderr)
        raise SystemExit(0 if argv else 2)
    script = argv[0]
    if not os.path.isfile(script):
        raise SystemExit(f"{USAGE}\nerror: {script!r} is not a file (the training script to run)")
    register()
    sys.argv = [script, *argv[1:]]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python SCRIPT.py` does
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
