"""How far does each optimizer scale? Steps to a validation target against batch size.

For every (optimizer, batch size) the lr is tuned on a grid that grows while its best value
sits at an edge; every run is an ordinary one-process trainer run (``configs/
critical_batch.yaml``: a short linear warm-up, then a constant lr) that evaluates on a
geometric grid of steps and ends at the target or its step budget. Then AdaAct and SGD train
once more at ``--noise-batch`` in micro-batches, recording the gradient noise scale. Finished
runs are skipped, so the same command continues an interrupted study. Writes
``steps_to_target.csv``, ``critical_batch.csv``, ``noise_scale.csv``, three PNGs and
``summary.md`` under ``--out``.

The study in the README::

    python launch/critical_batch.py --task digits_deformed \
        --optimizers adaact,sgd,adamw,lamb,lars --batch-sizes 16,32,64,128,256,512,1024 \
        --target 95 --seeds 2 --max-steps 3000 --jobs 2 --out runs/critical

Exit status: 0 every run final (a divergence is a result), 1 some run failed, 2 bad
arguments or a run directory that holds a run of another recipe.
"""

import sys

from adaact_dist.study.critical_cli import main

if __name__ == "__main__":
    sys.exit(main())
