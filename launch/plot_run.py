"""Redraw a run's PNG plots from its CSV files (training.png, activation_variance.png).

    python launch/plot_run.py runs/demo

Compare the per-layer activation variance of several runs (paper Fig. 1), e.g. the same
recipe with AdaAct, SGD and AdamW::

    python launch/plot_run.py runs/demo-adaact runs/demo-sgd runs/demo-adamw \
        --compare runs/activation_variance.png
"""

import sys

from adaact_dist.train.plots import main

if __name__ == "__main__":
    sys.exit(main())
