"""Small models that exercise every layer feature AdaAct must honour."""

from __future__ import annotations

import torch
from torch import nn


class TokenMLP(nn.Module):
    """3-D token inputs, LayerNorm, and one Linear called twice per forward."""

    def __init__(self, dim: int = 6, hidden: int = 10, classes: int = 3):
        super().__init__()
        self.embed = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.shared = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes, bias=False)

    def forward(self, x):
        h = self.norm(torch.tanh(self.embed(x)))
        h = torch.tanh(self.shared(torch.tanh(self.shared(h))))
        return self.head(h.mean(dim=1))


class GroupedCNN(nn.Module):
    """Stride, padding, dilation, groups, depthwise reflect padding, a 1x3 kernel, BatchNorm."""

    def __init__(self, classes: int = 5, batchnorm: bool = True):
        super().__init__()
        norm = nn.BatchNorm2d if batchnorm else lambda c: nn.Identity()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            norm(8),
            nn.Tanh(),
            nn.Conv2d(8, 6, 3, padding=2, dilation=2, groups=2),
            nn.Tanh(),
            nn.Conv2d(6, 6, 3, padding=1, groups=6, padding_mode="reflect"),
            nn.Tanh(),
            nn.Conv2d(6, 7, (1, 3), padding=(0, 1), bias=False),
            norm(7),
            nn.Tanh(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(7, classes)

    def forward(self, x):
        return self.head(self.features(x))
