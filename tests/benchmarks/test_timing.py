"""``benchmarks.timing.interleaved_medians``: the order the variants take turns in, what
counts, and a failing variant's fate (figures are made up: nothing is timed)."""

from __future__ import annotations

import itertools

import pytest

from benchmarks.timing import interleaved_medians


def recording(calls: list[str], figures: dict[str, list]) -> dict:
    """Measures that log their turns and hand out ``figures[name]`` one per turn."""
    handed = {name: iter(values) for name, values in figures.items()}

    def measure(name: str):
        def turn():
            calls.append(name)
            return next(handed[name])

        return turn

    return {name: measure(name) for name in figures}


def test_fixed_order_after_the_warm_up_rounds_whose_figures_do_not_count():
    calls: list[str] = []
    figures = {"a": [100.0, 1.0, 2.0, 9.0], "b": [100.0, 5.0, 4.0, 3.0]}
    medians = interleaved_medians(recording(calls, figures), 3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert medians == {"a": 2.0, "b": 4.0}


def test_rotating_rounds_start_at_the_next_variant_warm_up_included():
    calls: list[str] = []
    figures = {name: [0.0] * 4 for name in "abc"}
    interleaved_medians(recording(calls, figures), 2, warmup=2, rotate=True)
    assert calls == list("abcbcacababc")


def test_a_turn_may_give_one_figure_per_step():
    figures = {"steps": [[1.0, 2.0], [3.0, 10.0, 11.0]]}
    assert interleaved_medians(recording([], figures), 2) == {"steps": 3.0}


def test_a_failing_variant_sits_out_and_has_no_median_when_failures_are_collected(capsys):
    calls: list[str] = []
    count = itertools.count()

    def breaks() -> float:
        calls.append("broken")
        if next(count) == 1:
            raise RuntimeError("out of memory")
        return 0.0

    measures = {"broken": breaks, **recording(calls, {"fine": [1.0, 2.0, 3.0]})}
    failures: dict[str, str] = {}
    medians = interleaved_medians(measures, 3, failures=failures)
    assert medians == {"fine": 2.0}
    assert failures == {"broken": "RuntimeError: out of memory"}
    assert calls == ["broken", "fine", "broken", "fine", "fine"]
    assert "out of memory" in capsys.readouterr().err  # its traceback


def test_without_failures_collected_an_error_propagates():
    def breaks() -> float:
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        interleaved_medians({"broken": breaks}, 2)
