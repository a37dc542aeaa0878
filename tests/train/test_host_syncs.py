"""One device read per optimizer step, after the backward passes: the trainer's loss check.

On a GPU every ``.item()``, ``.tolist()``, ``bool()`` or ``float()`` of a device tensor waits for
the device. A real trainer (ZeRO 0, 1 and 2, two micro-batches per step) runs one step with
those reads recorded, beside its backward passes. AdaAct's step counters are not reads of the
device: they are CPU tensors whatever the device, as torch.optim's are (checked), and reads
made by AdaAct's own code are left out. (fp16's dynamic loss scaling adds DeepSpeed's overflow
check: one more read.)
"""

from __future__ import annotations

import json
import subprocess

from tests.train.helpers import PYTHON, ROOT, TINY, env, write_config

SCRIPT = """
import json, sys, torch
from adaact_dist.train.config_io import load_config
from adaact_dist.train.trainer import Trainer

READS = ("item", "tolist", "__bool__", "__float__", "__int__")
events = []
originals = {name: getattr(torch.Tensor, name) for name in READS}

def from_adaact_optim():  # whether the innermost project frame is AdaAct's (its step counts)
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if "adaact_dist" in path and "site-packages" not in path:
            return "adaact_dist/optim/" in path
        frame = frame.f_back
    return False

def recording(name):
    def read(self, *args, **kwargs):
        if not from_adaact_optim():
            events.append(name)
        return originals[name](self, *args, **kwargs)
    return read

result = {}
for stage, path in zip((0, 1, 2), sys.argv[1:]):
    trainer = Trainer(load_config(path))
    batches = trainer._batches(0)
    trainer.train_step(batches)  # the first step creates the optimizer's state
    steps = [s["step"] for s in trainer.optimizer.state.values() if "step" in s]
    assert steps and all(step.device.type == "cpu" for step in steps)
    backward = trainer.engine.backward
    def logged_backward(*args, **kwargs):
        events.append("backward")
        return backward(*args, **kwargs)
    trainer.engine.backward = logged_backward
    events.clear()
    for name in READS:
        setattr(torch.Tensor, name, recording(name))
    try:
        trainer.train_step(batches)
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)
    result[stage] = list(events)
print(json.dumps(result))
"""


def test_one_read_per_step_after_the_backward_passes(tmp_path):
    configs = [
        write_config(
            tmp_path / f"s{stage}.yaml",
            TINY,
            run={"output_dir": str(tmp_path / f"run{stage}")},
            distributed={"zero_stage": stage, "precision": "fp32", "timeout_s": 120},
            logging={**TINY["logging"], "activation_every_steps": 0},
        )
        for stage in (0, 1, 2)
    ]
    done = subprocess.run(
        [PYTHON, "-c", SCRIPT, *map(str, configs)],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    events = json.loads(done.stdout.strip().splitlines()[-1])
    for stage in ("0", "1", "2"):
        assert events[stage] == ["backward", "backward", "tolist"], stage
