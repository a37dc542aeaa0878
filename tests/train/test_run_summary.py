"""summary.json as a contract: what the trainer writes is what every reader gets back."""

from __future__ import annotations

import json

import pytest

from adaact_dist.train.run_summary import SUMMARY_FILE, RunSummary, StopReason


def _summary(reason: StopReason) -> RunSummary:
    return RunSummary(
        name="r", stop_reason=reason, optimizer="adaact", model="resnet10t", world_size=2,
        plan={"global_batch_size": 32}, epochs=3, epochs_done=2, steps=20, total_steps=30,
        best_top1=50.0, best_epoch=1, final_top1=40.0, final_top5=90.0, final_eval_count=37,
        target_top1=None, target_steps=None, target_images=None, train_time_s=1.5,
        wall_time_s=2.0, images_per_s=400.0, peak_memory_mb=100.0, resumed_from=None,
        best_checkpoint=None, run_dir="/runs/r",
    )  # fmt: skip


@pytest.mark.parametrize("reason", list(StopReason))
def test_summary_round_trips_and_spells_out_what_shell_readers_need(tmp_path, reason):
    written = _summary(reason)
    written.write(tmp_path)
    assert RunSummary.read(tmp_path) == written
    record = json.loads((tmp_path / SUMMARY_FILE).read_text())
    # launch/slurm_train.sbatch reads the plain string; the studies read "finished" too.
    assert record["stop_reason"] == reason.value
    assert record["finished"] is (reason in (StopReason.COMPLETED, StopReason.TARGET_REACHED))


def test_a_stop_reason_this_version_does_not_know_is_refused(tmp_path):
    _summary(StopReason.COMPLETED).write(tmp_path)
    path = tmp_path / SUMMARY_FILE
    path.write_text(path.read_text().replace('"completed"', '"paused"'))
    with pytest.raises(ValueError, match="'paused' is not a valid StopReason"):
        RunSummary.read(tmp_path)
