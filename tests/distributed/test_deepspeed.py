"""AdaAct under DeepSpeed on 2 real CPU ranks (gloo), and on one GPU (NCCL; skipped without a
CUDA GPU), against one-process controls.

Control: plain AdaAct in this process on the same global batches, accumulating the
micro-batches that the ranks run, so BatchNorm sees the same batches. Experiment: the
ranks of ``worker.py`` (see ``conftest.py``).
"""

from __future__ import annotations

import shutil

import pytest
import torch

from adaact_dist.distributed import convert_to_universal
from tests.distributed.common import max_relative_error, moved, named_params, run_control

STAGES = (0, 1, 2)
ZERO_WRAPPER = {0: "AdaAct", 1: "DeepSpeedZeroOptimizer", 2: "DeepSpeedZeroOptimizer"}
TOL = 1e-5
LOW_TOL = 2e-2  # bf16/fp16 forward/backward against the fp32 control
NCCL_FP32_TOL = 1e-4  # cuDNN's fp32 kernels (TF32 off) against the CPU control: summation order


def assert_identical_ranks(runs: list[dict]) -> None:
    for run in runs:
        assert run["identical"] and all(run["identical"]), "ranks' parameters diverged"


@pytest.mark.parametrize("stage", STAGES)
def test_k1_two_ranks_match_one_process_with_accumulation(main_suite, stage):
    runs = [rank[f"k1_s{stage}"] for rank in main_suite]
    rule = "sgd_momentum" if stage == 1 else "sgd"
    control = run_control(steps=6, micro_batches=2, other_rule=rule)
    want = named_params(control["model"])
    assert runs[0]["wrapper"] == ZERO_WRAPPER[stage]
    assert max_relative_error(runs[0]["params"], want) < TOL
    assert moved(want) > 1e-2
    assert_identical_ranks(runs)
    torch.testing.assert_close(runs[0]["second_moments"][6], control["second_moments"][6])
    assert runs[0]["sync_calls"] == 6  # one collective per optimizer step, not per group


def test_partition_boundaries_fall_inside_weight_rows(main_suite):
    for stage in (1, 2):
        for rank in main_suite:
            assert rank[f"k1_s{stage}"]["partial_rows"] > 0


@pytest.mark.parametrize("stage", (1, 2))
def test_k1_deepspeed_gradient_accumulation(main_suite, stage):
    control = run_control(steps=6, micro_batches=4)
    got = main_suite[0][f"k1_s{stage}_gas2"]["params"]
    assert max_relative_error(got, named_params(control["model"])) < TOL


@pytest.mark.parametrize("stage", (1, 2))
def test_k1_without_batchnorm_matches_one_process_with_the_whole_batch(main_suite, stage):
    control = run_control(steps=6, micro_batches=2, batchnorm=False, full_batch=True)
    got = main_suite[0][f"k1_s{stage}_nobn"]["params"]
    assert max_relative_error(got, named_params(control["model"])) < TOL


def test_k1_with_optimizer_offload_to_cpu(main_suite):
    control = run_control(steps=6, micro_batches=2)
    got = main_suite[0]["k1_s2_offload"]["params"]
    assert max_relative_error(got, named_params(control["model"])) < TOL


@pytest.mark.parametrize("stage", STAGES)
def test_k3_ranks_identical_and_v_exact_at_every_sync(main_suite, stage):
    runs = [rank[f"k3_s{stage}"] for rank in main_suite]
    assert_identical_ranks(runs)
    control = run_control(steps=7, micro_batches=2, stats_sync_every=3)
    every_step = run_control(steps=7, micro_batches=2)
    first_layer = slice(0, 3 * 3 * 3)  # its input is the data, whatever the weights
    local, mine = runs[0]["second_moments"], runs[1]["second_moments"]
    for step in range(1, 8):
        if step in (1, 4, 7):  # syncs: V averaged, exact
            assert torch.equal(local[step], mine[step])
            torch.testing.assert_close(local[step], control["second_moments"][step])
            torch.testing.assert_close(
                local[step][first_layer], every_step["second_moments"][step][first_layer]
            )
        else:  # between syncs each rank folds only its own statistics
            assert not torch.equal(local[step], mine[step])
    assert runs[0]["sync_calls"] == 3  # steps 1, 4 and 7
    preconds = runs[0]["preconds"]
    assert torch.equal(preconds[1], preconds[3]) and torch.equal(preconds[4], preconds[6])
    assert not torch.equal(preconds[3], preconds[4])
    assert max_relative_error(runs[0]["params"], named_params(control["model"])) < TOL


def test_stage1_momentum_per_rank_is_half_of_one_process(main_suite):
    control = run_control(steps=1, micro_batches=2, other_rule="sgd_momentum")
    single = sum(
        t.numel() * t.element_size()
        for state in control["optimizer"].state.values()
        for t in state.values()
    )
    total_elements = sum(p.numel() for p in control["model"].parameters())
    for rank in main_suite:
        run = rank["k1_s1"]
        assert 0.45 < run["state_bytes"] / single < 0.55
        # one flat exp_avg of this rank's partition per group, plus two scalar steps
        assert run["state_bytes"] <= 4 * (total_elements / 2 + 4) + 2 * 4
        assert run["table_bytes"] == main_suite[0]["k1_s0"]["table_bytes"]


@pytest.mark.parametrize(
    "stage, wrapper",
    [(0, "FP16_UnfusedOptimizer"), (1, "BF16_Optimizer"), (2, "DeepSpeedZeroOptimizer")],
)
def test_bf16_trains_like_fp32(main_suite, stage, wrapper):
    runs = [rank[f"bf16_s{stage}"] for rank in main_suite]
    assert runs[0]["wrapper"] == wrapper
    control = named_params(run_control(steps=5, micro_batches=2, batchnorm=False)["model"])
    assert max_relative_error(runs[0]["params"], control) < LOW_TOL
    assert_identical_ranks(runs)


def assert_skipped_step_left_no_trace(straight: dict, skipped: dict) -> None:
    assert skipped["skipped"] == 1 and straight["skipped"] == 0
    for a, b in zip(straight["flat"], skipped["flat"]):
        assert torch.equal(a, b)
    assert skipped["stats_step"] == straight["stats_step"] == 5
    assert skipped["layer_steps"] == straight["layer_steps"]
    assert skipped["state_steps"] == straight["state_steps"]
    assert torch.equal(skipped["second_moments"][5], straight["second_moments"][5])


@pytest.mark.parametrize("stage", STAGES)
def test_bf16_overflow_step_neither_counts_nor_folds_statistics(main_suite, stage):
    for rank in main_suite:
        assert_skipped_step_left_no_trace(rank[f"bf16_s{stage}"], rank[f"bf16_s{stage}_overflow"])


# fp16 runs on every CPU: where DeepSpeed's CPU accelerator refuses it (no AVX512-FP16, as on AMD
# EPYC; main_suite[0]["fp16_native"] false) the worker tells it otherwise and torch computes fp16
# in its reference kernels, so DeepSpeed's loss scaling, overflow skips and unscaling run as on a
# GPU; only the fp16 kernels differ between the two kinds of CPU.
FP16_WRAPPER = {0: "FP16_UnfusedOptimizer", 1: ZERO_WRAPPER[1], 2: ZERO_WRAPPER[2]}


@pytest.mark.parametrize("stage", STAGES)
def test_fp16_trains_like_fp32(main_suite, stage):
    """At stage 0 DeepSpeed 0.19 divides the gradients by a loss scale that its backward never
    applied (deepspeedai/DeepSpeed#8393): without ``apply_stage0_loss_scale`` the weights here
    move 1/256 as far as fp32's."""
    runs = [rank[f"fp16_s{stage}"] for rank in main_suite]
    assert runs[0]["wrapper"] == FP16_WRAPPER[stage]
    control = named_params(run_control(steps=5, micro_batches=2, batchnorm=False)["model"])
    assert moved(control) > 3 * LOW_TOL  # weights that stayed put fail the next line
    assert max_relative_error(runs[0]["params"], control) < LOW_TOL
    assert_identical_ranks(runs)


def test_fp16_stage0_scaled_once_where_deepspeed_scales_itself(main_suite):
    """A DeepSpeed that scales the loss at stage 0 by itself (the upstream fix) is left alone."""
    control = named_params(run_control(steps=5, micro_batches=2, batchnorm=False)["model"])
    for rank in main_suite:
        assert max_relative_error(rank["fp16_s0_deepspeed_scales"]["params"], control) < LOW_TOL


@pytest.mark.parametrize("stage", STAGES)
def test_fp16_overflow_step_leaves_only_the_halved_loss_scale(main_suite, stage):
    """The skipped step's one trace is the loss scale: halved at stage 0, kept by ZeRO's
    hysteresis (2 overflows) at stages 1 and 2 (``worker.overflow_pair``)."""
    for rank in main_suite:
        assert rank[f"fp16_s{stage}_scale_before_skip"] == 256
        assert rank[f"fp16_s{stage}_overflow"]["loss_scale"] == (128 if stage == 0 else 256)
        assert_skipped_step_left_no_trace(rank[f"fp16_s{stage}"], rank[f"fp16_s{stage}_overflow"])


@pytest.mark.parametrize("name", ["s0", "s1", "s2", "bf16_s1"])
def test_save_at_step_3_and_resume_continues_exactly(main_suite, name):
    for rank in main_suite:
        straight, resumed = rank[f"ckpt_{name}_straight"], rank[f"ckpt_{name}_resumed"]
        assert resumed["wrapper"] == straight["wrapper"]
        assert max_relative_error(resumed["params"], straight["params"]) == 0.0
        assert resumed["stats_step"] == straight["stats_step"] == 6
        assert torch.equal(resumed["second_moments"][6], straight["second_moments"][6])
        assert torch.equal(resumed["preconds"][6], straight["preconds"][6])
        for a, b in zip(resumed["flat"], straight["flat"]):
            assert torch.equal(a, b)
    assert main_suite[0]["ckpt_bf16_s1_straight"]["wrapper"] == "BF16_Optimizer"


@pytest.mark.parametrize("name, tolerance", [("s1", TOL), ("bf16_s1", 1e-2)])
def test_two_rank_checkpoint_resumes_on_one_rank(main_suite, one_rank_suite, name, tolerance):
    resumed = one_rank_suite[0][f"from_two_{name}"]
    straight = main_suite[0][f"ckpt_{name}_straight"]
    assert resumed["wrapper"] == straight["wrapper"]
    assert max_relative_error(resumed["params"], straight["params"]) < tolerance
    assert resumed["stats_step"] == 6 and resumed["state_steps"] == [6.0, 6.0]
    # k = 2: step 5 synced; at step 6 a rank of the 2-rank run holds only its own fold
    torch.testing.assert_close(
        resumed["second_moments"][5], straight["second_moments"][5], rtol=tolerance, atol=0
    )


def test_one_rank_checkpoint_resumes_on_two_ranks(one_rank_suite, two_from_one_suite):
    straight = one_rank_suite[0]["straight"]
    runs = [rank["from_one"] for rank in two_from_one_suite]
    assert max_relative_error(runs[0]["params"], straight["params"]) < TOL
    assert_identical_ranks(runs)
    assert runs[0]["stats_step"] == 6
    torch.testing.assert_close(runs[0]["second_moments"][5], straight["second_moments"][5])


@pytest.mark.parametrize(
    "fix, key",
    [
        ("round_robin_gradients to false", "refuse_round_robin"),
        ("elastic_checkpoint to false", "refuse_elastic"),
        ("zero_optimization.stage 0, 1 or 2", "refuse_stage3"),
    ],
)
def test_unsupported_zero_options_refused_with_the_fix(main_suite, fix, key):
    message = main_suite[0][key]
    assert message.startswith("NotImplementedError") and fix in message


def test_binding_twice_or_to_another_optimizer_is_refused(main_suite):
    assert main_suite[0]["bind_twice"].startswith("RuntimeError: This AdaAct is already bound")
    assert main_suite[0]["bind_stranger"].startswith("ValueError: This engine was not built")


@pytest.mark.parametrize("key", ["unbound_zero", "unbound_bf16"])
def test_plain_deepspeed_initialize_says_to_use_the_binding(main_suite, key):
    """The core refuses the engine's copies: at the first step (ZeRO) or already inside
    deepspeed.initialize (FP16_UnfusedOptimizer, bf16 at stage 0, steps it to create state)."""
    message = main_suite[0][key]
    assert message.startswith("RuntimeError") and "deepspeed_initialize" in message


def test_converter_needs_every_rank_and_says_what_is_missing(main_suite, out_dir, tmp_path):
    partial = tmp_path / "step3"
    shutil.copytree(out_dir / "ckpt_s2" / "step3", partial)
    next(partial.glob("zero_pp_rank_1_*")).unlink()
    with pytest.raises(ValueError, match="do not add up to whole parameters"):
        convert_to_universal(partial)
    with pytest.raises(FileNotFoundError, match="stage-0 checkpoint needs no conversion"):
        convert_to_universal(tmp_path)


def test_the_binding_warns_when_deepspeed_clips_by_default(main_suite):
    """DeepSpeed 0.19 clips at norm 1.0 when its config has no gradient_clipping."""
    (warning,) = main_suite[0]["clipping_warnings"]
    assert "clips the global gradient norm at 1 before every AdaAct step" in warning
    assert '"gradient_clipping": 0' in warning
    assert main_suite[0]["no_clipping_warnings"] == []


@pytest.mark.parametrize("stage", (1, 2))
def test_autocast_gradients_are_reduced_in_fp32_unless_asked(main_suite, stage):
    """``distributed.grad_reduce_dtype``: fp32 as the paper's AMP + DDP; ``autocast`` is
    DeepSpeed's default, bf16 for the Linear and Conv weights (BatchNorm's stay fp32)."""
    fp32, autocast = (main_suite[0][f"autocast_s{stage}_reduce_{d}"] for d in ("fp32", "autocast"))
    assert fp32["buckets"] == fp32["weights"] == ["torch.float32"]
    assert autocast["buckets"] == autocast["weights"] == ["torch.bfloat16", "torch.float32"]
    assert max_relative_error(fp32["params"], autocast["params"]) < LOW_TOL


# -- one GPU rank over NCCL: the same controls, fp16 with dynamic loss scaling -------------------
@pytest.mark.parametrize("stage", STAGES)
def test_nccl_fp32_matches_the_cpu_control(gpu_suite, stage, record_property):
    run = gpu_suite[0][f"fp32_s{stage}"]
    control = run_control(steps=6, micro_batches=2)
    error = max_relative_error(run["params"], named_params(control["model"]))
    got, want = run["second_moments"][6], control["second_moments"][6]
    v_error = ((got - want).norm() / want.norm()).item()
    record_property("engine optimizer", run["wrapper"])
    record_property("max rel. error vs control", error)
    record_property("V rel. error vs control", v_error)
    assert error < NCCL_FP32_TOL
    assert v_error < NCCL_FP32_TOL
    assert_identical_ranks([run])
    assert run["sync_calls"] == 6  # one collective per optimizer step


def nccl_low_precision(gpu_suite, precision: str, stage: int) -> tuple[dict, dict, dict]:
    """The run without and with an overflow step, and the control's weights."""
    results = gpu_suite[0]
    if precision == "fp16":
        assert results["fp16_supported"], "DeepSpeed's accelerator reports no fp16 on this GPU"
    straight, skipped = results[f"{precision}_s{stage}"], results[f"{precision}_s{stage}_overflow"]
    control = named_params(run_control(steps=5, micro_batches=2, batchnorm=False)["model"])
    return straight, skipped, control


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_nccl_low_precision_trains_like_fp32(gpu_suite, precision, stage, record_property):
    straight, _, control = nccl_low_precision(gpu_suite, precision, stage)
    error = max_relative_error(straight["params"], control)
    record_property("engine optimizer", straight["wrapper"])
    record_property("max rel. error vs control", error)
    assert error < LOW_TOL
    assert_identical_ranks([straight])
    assert straight["skipped"] == 0


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_nccl_overflow_step_neither_counts_nor_folds_statistics(
    gpu_suite, precision, stage, record_property
):
    straight, skipped, control = nccl_low_precision(gpu_suite, precision, stage)
    error = max_relative_error(skipped["params"], control)
    record_property("max rel. error vs control", error)
    record_property("skipped steps", skipped["skipped"])
    assert error < LOW_TOL
    assert_identical_ranks([skipped])
    assert_skipped_step_left_no_trace(straight, skipped)
