"""The fit of S(B) = S_min (1 + B_noise / B) and the largest useful batch, on known curves."""

from __future__ import annotations

import random

import pytest

from adaact_dist.study.scaling_fit import fit_steps, max_useful_batch

SIZES = [16, 32, 64, 128, 256, 512, 1024]


@pytest.mark.parametrize(("s_min", "b_noise"), [(40.0, 150.0), (500.0, 12.0), (7.0, 3000.0)])
def test_the_fit_recovers_a_known_curve(s_min, b_noise):
    steps = [s_min * (1 + b_noise / b) for b in SIZES]
    fit = fit_steps(SIZES, steps)
    assert fit.s_min == pytest.approx(s_min, rel=1e-6)
    assert fit.b_noise == pytest.approx(b_noise, rel=1e-6)
    assert fit.steps(100) == pytest.approx(s_min * (1 + b_noise / 100), rel=1e-6)


def test_the_fit_stays_close_under_measurement_noise():
    rng = random.Random(0)
    steps = [40.0 * (1 + 150.0 / b) * rng.uniform(0.95, 1.05) for b in SIZES]
    fit = fit_steps(SIZES, steps)
    assert fit.s_min == pytest.approx(40.0, rel=0.15)
    assert fit.b_noise == pytest.approx(150.0, rel=0.25)


def test_the_fit_needs_two_batch_sizes_and_positive_counts():
    with pytest.raises(ValueError, match="2 distinct"):
        fit_steps([64, 64], [10, 11])
    with pytest.raises(ValueError, match="positive"):
        fit_steps([16, 32], [10, 0])


def test_max_useful_batch_is_the_last_increase_that_saves_10_percent():
    assert max_useful_batch([16, 32, 64, 128], [1000, 500, 260, 250]) == (64, False)
    # A cell below the curve makes the next one look flat; the range goes on past it.
    assert max_useful_batch([16, 32, 64, 128, 256], [1000, 500, 490, 200, 195]) == (128, False)
    # Every doubling still cuts 10% or more: the largest size is only a lower bound.
    assert max_useful_batch([16, 32, 64], [1000, 600, 500]) == (64, True)
    # A size whose runs never reached the target is not useful.
    assert max_useful_batch([16, 32, 64], [1000, None, 200]) == (16, False)
    # Sizes below the first that reached the target are left out: the range starts there.
    assert max_useful_batch([16, 32, 64, 128], [None, 1000, 500, 480]) == (64, False)
    assert max_useful_batch([16, 32, 64], [None, 1000, 600]) == (64, True)
    with pytest.raises(ValueError, match="no batch size"):
        max_useful_batch([16, 32], [None, None])
