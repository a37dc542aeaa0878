"""How a failed or hung shared launch is reported: by the scenario it was in, with its log."""

from __future__ import annotations

from tests.distributed.conftest import SCENARIO_MARK, _last_scenario, _tail
from tests.distributed.worker import SCENARIO_MARK as WORKER_MARK

LOG = "\n".join(
    [
        "deepspeed launcher start-up",
        f"{SCENARIO_MARK}k1_s0",
        "fine",
        f"{SCENARIO_MARK}bf16_s1",
        "Traceback (most recent call last):",
        "RuntimeError: boom",
    ]
)


def test_a_failure_is_named_by_the_last_scenario_that_started():
    assert WORKER_MARK == SCENARIO_MARK  # the worker prints what the report reads
    assert _last_scenario(LOG) == "scenario bf16_s1"
    assert _last_scenario("no marks yet") == "its start-up"


def test_the_log_shown_starts_at_that_scenario():
    tail = _tail(LOG)
    assert tail.startswith(f"{SCENARIO_MARK}bf16_s1") and tail.endswith("RuntimeError: boom")
    assert "fine" not in tail
    assert _tail("x" * 10_000, chars=100) == "x" * 100
