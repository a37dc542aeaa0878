"""A rank that raises, or hangs, ends the whole job with an error in bounded time.

Each case launches 2 real ranks; rank 1 fails at step 3. ``launch`` gives up after
``SILENCE_S`` seconds without output, so a job that would wait forever fails the test instead.
"""

from __future__ import annotations

from adaact_dist.distributed import WATCHDOG_EXIT_CODE
from tests.distributed.conftest import launch


def output(done) -> str:
    return done.stdout + done.stderr


def test_rank_that_raises_ends_the_job_with_an_error(tmp_path):
    done = launch("failure_raise", tmp_path, 2, "--pg-timeout", "30")
    assert done.returncode != 0
    assert "rank 1 fails on purpose" in output(done)


def test_hung_rank_is_ended_by_the_collective_timeout(tmp_path):
    # rank 1 sleeps without exiting; rank 0 waits in the gradient all-reduce
    done = launch("failure_hang", tmp_path, 2, "--pg-timeout", "5")
    assert done.returncode != 0
    assert "rank 1 hangs on purpose" in output(done)
    assert "Timed out waiting 5000ms" in output(done)


def test_hung_rank_is_ended_by_the_watchdog(tmp_path):
    # torch's 30-minute collective timeout: only the watchdog can end this one in time
    done = launch("failure_hang", tmp_path, 2, "--pg-timeout", "1800", "--hang-timeout", "5")
    assert done.returncode == WATCHDOG_EXIT_CODE
    assert "adaact-dist watchdog: no forward pass or optimizer step" in output(done)
