"""A small-scale optimizer study: AdaAct against SGD, AdamW, LAMB and LARS across batch sizes.

Built on the trainer, never inside it: each run is an ordinary ``launch/train_imagenet.py``
run in its own directory (:mod:`~adaact_dist.study.runner`), with the per-optimizer lr table
and scaling rules of :mod:`~adaact_dist.study.recipes`; :mod:`~adaact_dist.study.results`,
:mod:`~adaact_dist.study.report` and :mod:`~adaact_dist.study.figures` turn the run
directories into ``results.csv``, ``summary.md`` and PNGs. Entry point:
``launch/compare_optimizers.py``.
"""

from adaact_dist.study.recipes import BASE_BATCH, RECIPES, OptimizerRecipe, RunSpec

__all__ = ["BASE_BATCH", "RECIPES", "OptimizerRecipe", "RunSpec"]
