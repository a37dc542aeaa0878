"""Mixup / CutMix on the device through timm, with a private random state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.data import Mixup

from adaact_dist.data import DeviceMixup


def _batch(n=8, classes=5):
    torch.manual_seed(0)
    return torch.randn(n, 3, 8, 8), torch.arange(n) % classes


def test_soft_targets_for_ce_and_bce():
    mixup = DeviceMixup(num_classes=5, mixup_alpha=0.1, cutmix_alpha=1.0, label_smoothing=0.1)
    images, labels = _batch()
    mixed, targets = mixup(images.clone(), labels)
    assert mixed.shape == images.shape and targets.shape == (8, 5)
    assert targets.dtype == torch.float32 and targets.device == images.device
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert (targets > 0).all()  # smoothing: every class gets some mass (BCE needs [0, 1])
    assert targets.max() <= 1


def test_matches_timm_mixup_and_leaves_global_numpy_alone():
    images, labels = _batch()
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    ours = DeviceMixup(num_classes=5, mixup_alpha=0.8, cutmix_alpha=1.0, seed=7)
    got = [ours(images.clone(), labels) for _ in range(4)]
    assert (np.random.get_state()[1] == before).all()
    np.random.seed(7)
    timm_mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=5)
    for x, y in got:
        ref_x, ref_y = timm_mixup(images.clone(), labels)
        torch.testing.assert_close(x, ref_x)
        torch.testing.assert_close(y, ref_y)


def test_disabled_gives_smoothed_one_hot_and_odd_batches_fail():
    images, labels = _batch(n=7)
    off = DeviceMixup(num_classes=5, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.2)
    x, y = off(images.clone(), labels)
    assert torch.equal(x, images) and not off.enabled
    torch.testing.assert_close(y[0], torch.tensor([0.84, 0.04, 0.04, 0.04, 0.04]))
    on = DeviceMixup(num_classes=5)
    with pytest.raises(ValueError, match="7 samples"):
        on(images, labels)
    on.enabled = False
    assert on(images, labels)[1].shape == (7, 5)
    with pytest.raises(ValueError, match="switch_prob=2"):
        DeviceMixup(num_classes=5, switch_prob=2)


def test_state_dict_resumes_the_stream(tmp_path):
    images, labels = _batch()
    a = DeviceMixup(num_classes=5, mixup_alpha=0.8, seed=3)
    a(images.clone(), labels)
    torch.save(a.state_dict(), tmp_path / "mixup.pt")
    expected = [a(images.clone(), labels)[1] for _ in range(3)]
    b = DeviceMixup(num_classes=5, mixup_alpha=0.8, seed=99)
    b.load_state_dict(torch.load(tmp_path / "mixup.pt", weights_only=True))
    for target in expected:
        torch.testing.assert_close(b(images.clone(), labels)[1], target)
