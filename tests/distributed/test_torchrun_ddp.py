"""The same sync without DeepSpeed: DDP and TorchStatsSync on 2 ranks under torchrun."""

from __future__ import annotations

import torch

from tests.distributed.common import max_relative_error, named_params, run_control


def test_k1_ddp_matches_one_process(ddp_suite):
    control = run_control(steps=6, micro_batches=2)
    run = ddp_suite[0]["k1"]
    assert max_relative_error(run["params"], named_params(control["model"])) < 1e-5
    assert all(rank["k1"]["identical"] and all(rank["k1"]["identical"]) for rank in ddp_suite)
    assert run["sync_calls"] == 6


def test_k3_ddp_replicas_identical_and_v_exact_at_syncs(ddp_suite):
    control = run_control(steps=7, micro_batches=2, stats_sync_every=3)
    runs = [rank["k3"] for rank in ddp_suite]
    assert all(run["identical"] and all(run["identical"]) for run in runs)
    for step in (1, 4, 7):
        assert torch.equal(runs[0]["second_moments"][step], runs[1]["second_moments"][step])
        torch.testing.assert_close(runs[0]["second_moments"][step], control["second_moments"][step])
    assert runs[0]["sync_calls"] == 3
    assert max_relative_error(runs[0]["params"], named_params(control["model"])) < 1e-5
