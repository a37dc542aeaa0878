"""AdaAct on timm's model zoo, in both memory formats, against an im2col reference.

One family per entry, shrunk (few classes, small images, fewer blocks) so that a float64
step of each takes well under a second: residual, depthwise and inverted-residual CNNs,
ConvNeXt, Inception, ConvMixer, ViT/DeiT, Swin, MLP-Mixer, conv/attention hybrids, and
BEiT and EVA, whose attention passes ``qkv.weight`` to ``F.linear`` itself.
``benchmarks/sweep_timm_models.py`` runs the full-size models.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from adaact_dist import AdaAct

BETA2 = 0.999

# name: (timm.create_model keyword arguments, image size)
MODELS = {
    "resnet18": ({}, 32),
    "mobilenetv3_small_050": ({}, 32),
    "efficientnet_b0": ({}, 32),
    "convnext_atto": ({"depths": (1, 1, 1, 1)}, 32),
    "convnextv2_atto": ({"depths": (1, 1, 1, 1)}, 32),
    "inception_v3": ({}, 75),
    "vit_tiny_patch16_224": ({"img_size": 32, "depth": 2}, 32),
    "deit_tiny_patch16_224": ({"img_size": 32, "depth": 2}, 32),
    "swin_tiny_patch4_window7_224": (
        {"img_size": 32, "window_size": 2, "embed_dim": 24, "depths": (1, 1, 1, 1)},
        32,
    ),
    "edgenext_xx_small": ({"depths": (1, 1, 1, 1)}, 64),
    "levit_128s": ({"img_size": 64}, 64),
    "coatnet_nano_rw_224": ({"img_size": 64}, 64),
    "beit_base_patch16_224": ({"img_size": 32, "embed_dim": 48, "depth": 2, "num_heads": 2}, 32),
    "eva02_tiny_patch14_224": ({"img_size": 28, "depth": 2}, 28),
}


def shrunk(name: str) -> nn.Module:
    """Families whose timm builders fix the sizes, built from their classes directly."""
    if name == "convmixer":  # 9x9 depthwise kernels on 8x8 maps
        from timm.models.convmixer import ConvMixer

        return ConvMixer(dim=16, depth=2, kernel_size=9, patch_size=4, num_classes=3)
    from timm.models.mlp_mixer import MlpMixer  # token mixing reads transposed inputs

    return MlpMixer(num_classes=3, img_size=32, patch_size=8, num_blocks=2, embed_dim=32)


SHRUNK = ["convmixer", "mlp_mixer"]


def build(name: str, device: torch.device | str = "cpu") -> tuple[nn.Module, int]:
    torch.manual_seed(0)
    if name in SHRUNK:
        return shrunk(name).double().to(device), 32
    kwargs, size = MODELS[name]
    model = timm.create_model(name, pretrained=False, num_classes=3, **kwargs)
    return model.double().to(device), size


class CallRecorder(TorchFunctionMode):
    """Every ``F.linear``/``F.conv2d`` input, keyed by weight, whoever makes the call.

    Shares nothing with AdaAct's hooks: a module's own forward makes the same call, so this
    sees the inputs of called modules and of weights used directly alike.
    """

    def __init__(self, weights: dict[int, nn.Module]):
        super().__init__()
        self.weights = weights
        self.calls: dict[nn.Module, list] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear or func is F.conv2d:
            params = dict(zip(("input", "weight", "bias", "stride", "padding", "dilation"), args))
            params.update(kwargs)
            module = self.weights.get(id(params["weight"]))
            if module is not None:
                self.calls.setdefault(module, []).append(params)
        return func(*args, **kwargs)


def reference_mean_squares(module: nn.Module, calls: list[dict]) -> torch.Tensor:
    """Mean of ``a**2`` per input feature over every sample, with explicit im2col patches."""
    samples = []
    for call in calls:
        x = call["input"].detach()
        if isinstance(module, nn.Conv2d):
            padding = call.get("padding", 0)
            if isinstance(padding, str):  # "same"/"valid": pad by hand like torch does
                total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
                pad = (0, 0, 0, 0) if padding == "valid" else ()
                for t in total[::-1] if padding == "same" else ():
                    pad += (t // 2, t - t // 2)
                x, padding = F.pad(x, pad), 0
            cols = F.unfold(
                x, module.kernel_size, call.get("dilation", 1), padding, call.get("stride", 1)
            )
            samples.append(cols.transpose(1, 2).reshape(-1, cols.shape[1]))
        else:
            samples.append(x.reshape(-1, x.shape[-1]))
    a = torch.cat(samples)
    return (a * a).mean(dim=0)


def one_step(model: nn.Module, x: torch.Tensor, channels_last: bool):
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = AdaAct(model.parameters(), model=model, lr=0.01, betas=(0.9, BETA2))
    layers = {id(m.weight): m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    with CallRecorder(layers) as recorder:
        output = model(x)
    F.cross_entropy(output, torch.arange(x.shape[0], device=x.device) % 3).backward()
    optimizer.step()
    return model, optimizer, recorder.calls


@pytest.mark.parametrize("name", [*MODELS, *SHRUNK])
def test_statistics_and_step_in_both_memory_formats(name, device):
    model, size = build(name, device)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=generator).to(device)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    updates = {}
    for channels_last in (False, True):
        trained, optimizer, calls = one_step(copy.deepcopy(model), x, channels_last)
        modules = dict(trained.named_modules())
        moments = optimizer.activation_second_moments()
        assert moments, "AdaAct preconditions no layer of this model"
        for layer_name, second_moment in moments.items():
            module = modules[layer_name]
            assert module in calls, f"{layer_name}: no F.linear/F.conv2d call used its weight"
            expected = reference_mean_squares(module, calls[module])
            measured = second_moment.reshape(-1) / (1 - BETA2)  # V_1 = (1 - beta2) A_1
            torch.testing.assert_close(measured, expected, rtol=1e-6, atol=1e-12, msg=layer_name)
        updates[channels_last] = {n: p.detach() - initial[n] for n, p in trained.named_parameters()}
    # The same step in both formats, up to float64 summation order, which small-batch
    # BatchNorm in these shrunk, untrained models amplifies to about 1e-8 of the update
    # (and to noise of that size in updates that cancel to about zero).
    scale = max(update.norm() for update in updates[False].values())
    for param_name, update in updates[False].items():
        difference = (updates[True][param_name] - update).norm()
        assert difference <= 1e-6 * update.norm() + 1e-10 * scale, param_name


@pytest.mark.parametrize("name", ["beit_base_patch16_224", "eva02_tiny_patch14_224"])
def test_weights_used_through_f_linear_are_read_from_those_calls(name):
    model, size = build(name)
    optimizer = AdaAct(model.parameters(), model=model)
    assert optimizer.functional_layers == []  # known after the first training forward
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    for _ in range(2):  # the first forward finds them, the second reads them in their scope
        optimizer.zero_grad()
        model(x).sum().backward()
        optimizer.step()
    expected = [n for n, m in model.named_modules() if n.endswith("attn.qkv")]
    assert expected and optimizer.functional_layers == expected
    assert all(layer.step == 2 for layer in optimizer.layers)
