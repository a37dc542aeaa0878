"""Compare AdaAct with SGD, AdamW, LAMB and LARS at small scale, across batch sizes and seeds.

One ordinary trainer run per (task, optimizer, batch size, seed), each in its own run
directory under ``--out``, one process each (ZeRO stage 0 for every optimizer). Finished runs
are skipped and interrupted ones resume, so the same command continues a study. The lr of each
optimizer is the base lr of the optimizer table, ``adaact_dist/train/optimizers.py`` (chosen
by ``--sweep``), scaled by its rule; ``results.csv``, ``summary.md`` and the PNGs are
rewritten at the end.

The study in the README (``benchmarks/compare/``), sweep first::

    python launch/compare_optimizers.py --sweep --tasks digits --seeds 1 --jobs 2 \
        --out runs/compare
    python launch/compare_optimizers.py --config compare --optimizers adaact,sgd,adamw,lamb,lars \
        --batch-sizes 64,256,1024 --seeds 3 --jobs 2 --out runs/compare

Any trainer recipe and any override that the study does not set per run::

    python launch/compare_optimizers.py --config demo --optimizers adaact,sgd \
        --batch-sizes 64 --seeds 1 --set schedule.epochs=3 --out runs/quick

Exit status: 0 every run finished (or diverged: a result too), 1 some run failed, 2 bad
arguments or config, or a run directory that holds a run of another recipe.
"""

import sys

from adaact_dist.study.cli import main

if __name__ == "__main__":
    sys.exit(main())
