"""``python -m adaact_dist.train``: the trainer's command line from the installed package, as
``launch/train_imagenet.py`` runs it from a checkout (the studies start their runs so)."""

import sys

from adaact_dist.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
