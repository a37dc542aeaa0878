"""What the launched ranks and the single-process controls share: model, data, configs.

The global batch of step ``t`` is ``micro_batches`` micro-batches of ``MICRO`` samples.
Rank ``r`` with gradient accumulation ``g`` runs micro-batches ``r*g .. r*g+g-1``; the
control runs them all in one process with accumulation, so BatchNorm sees the same
batches and the two must agree up to float summation order.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from adaact_dist import AdaAct

MICRO = 3
CLASSES = 5
LRS, DECAYS = (0.05, 0.02), (0.01, 0.0)


class OddCNN(nn.Module):
    """Conv biases, BatchNorm, a grouped conv and a Linear head, all of odd sizes.

    With 2 ranks the partition boundary of the matrix group falls inside a row of
    ``features.3.weight`` (row length 45), and the grouped conv's rows (27 long, 2 per
    group) are split over fragments too.
    """

    def __init__(self, batchnorm: bool = True):
        super().__init__()
        norm = nn.BatchNorm2d if batchnorm else (lambda channels: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(3, 5, 3, stride=2, padding=1),
            norm(5),
            nn.Tanh(),
            nn.Conv2d(5, 9, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(9, 6, 3, padding=1, groups=3),
            norm(6),
            nn.Tanh(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(6, CLASSES)

    def forward(self, x):
        return self.head(self.features(x))


def make_model(batchnorm: bool = True, seed: int = 0) -> OddCNN:
    torch.manual_seed(seed)
    return OddCNN(batchnorm)


def param_groups(model: nn.Module) -> list[dict]:
    """Matrices and vectors apart, each with its own lr and weight decay (timm-like)."""
    matrices = [p for p in model.parameters() if p.dim() > 1]
    vectors = [p for p in model.parameters() if p.dim() <= 1]
    return [
        {"params": matrices, "lr": LRS[0], "weight_decay": DECAYS[0]},
        {"params": vectors, "lr": LRS[1], "weight_decay": DECAYS[1]},
    ]


def make_optimizer(model: nn.Module, **kwargs) -> AdaAct:
    kwargs.setdefault("betas", (0.9, 0.99))
    return AdaAct(param_groups(model), model=model, **kwargs)


def micro_batch(step: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Micro-batch ``index`` of the global batch of step ``step`` (1-based), fixed by seed."""
    gen = torch.Generator().manual_seed(1000 * step + index)
    x = torch.randn(MICRO, 3, 9, 11, generator=gen)
    y = torch.randint(0, CLASSES, (MICRO,), generator=gen)
    return x, y


def ds_config(stage: int, gas: int = 1, **extra) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": MICRO,
        "gradient_accumulation_steps": gas,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": 0.0,  # DeepSpeed 0.19 clips at 1.0 unless told otherwise
        "steps_per_print": 10**6,
        "wall_clock_breakdown": False,
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def run_control(
    *,
    steps: int,
    micro_batches: int,
    batchnorm: bool = True,
    full_batch: bool = False,
    first_step: int = 1,
    model: nn.Module | None = None,
    optimizer: AdaAct | None = None,
    **optimizer_kwargs,
) -> dict:
    """One process, plain AdaAct: the ``micro_batches`` of each step accumulated (or, with
    ``full_batch``, concatenated into one batch). Returns the model, the optimizer and
    ``V`` after every step."""
    if model is None:
        model = make_model(batchnorm)
        optimizer = make_optimizer(model, **optimizer_kwargs)
    second_moments = {}
    for step in range(first_step, first_step + steps):
        batches = [micro_batch(step, i) for i in range(micro_batches)]
        if full_batch:
            x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
            F.cross_entropy(model(x), y).backward()
        else:
            for x, y in batches:
                (F.cross_entropy(model(x), y) / micro_batches).backward()
        optimizer.step()
        optimizer.zero_grad()
        second_moments[step] = optimizer._table.second_moment.clone()
    return {"model": model, "optimizer": optimizer, "second_moments": second_moments}


def named_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().float().clone() for name, p in model.named_parameters()}


def max_relative_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    assert got.keys() == want.keys()
    return max(((got[n] - want[n]).norm() / want[n].norm()).item() for n in want)


def moved(model_params: dict[str, torch.Tensor]) -> float:
    """How far a run moved from the initial weights (so a comparison means something)."""
    start = named_params(make_model())
    return max_relative_error(model_params, {n: start[n] for n in model_params})


def clone_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)
