"""Optimizer studies: AdaAct against SGD, AdamW, LAMB and LARS across batch sizes.

Built on the trainer, never inside it: each run is an ordinary trainer run in its own
directory (:mod:`~adaact_dist.study.runner`), with the lr, scaling rule and weight decay of the
optimizer table (:data:`~adaact_dist.train.optimizers.OPTIMIZERS`) and the warm-up of
:mod:`~adaact_dist.study.recipes`; :mod:`~adaact_dist.study.results`,
:mod:`~adaact_dist.study.report` and :mod:`~adaact_dist.study.figures` turn the run
directories into ``results.csv``, ``summary.md`` and PNGs. Entry point:
``launch/compare_optimizers.py``.

The critical-batch study (``launch/critical_batch.py``) asks the large-batch question with
the field's measurement: steps to a validation target against batch size, the lr tuned at
every batch size (:mod:`~adaact_dist.study.critical_batch`), the fit of McCandlish et al.'s
``S(B) = S_min (1 + B_noise / B)`` (:mod:`~adaact_dist.study.scaling_fit`) and the gradient
noise scale; :mod:`~adaact_dist.study.critical_results`, ``critical_report`` and
``critical_figures`` write its tables, summary and plots.
"""

from adaact_dist.study.recipes import RunSpec

__all__ = ["RunSpec"]
