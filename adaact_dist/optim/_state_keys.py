"""Names of AdaAct's state entries, in one place.

``exp_avg`` and ``step`` follow torch's Adam, so DeepSpeed's checkpoint tools find them.
"""

EXP_AVG = "exp_avg"
STEP = "step"
MOMENTUM_BUFFER = "momentum_buffer"

# Extra entry of ``state_dict()``: activation statistics keyed by module path.
ACTIVATION_STATS = "adaact_activation_stats"
LAYERS = "layers"
SECOND_MOMENT = "exp_avg_sq"
PRECOND = "precond"
LAYER_STEP = "step"
SYNC_STEP = "stats_step"
