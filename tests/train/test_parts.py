"""The loop's parts alone: lr schedule, exact distributed evaluation, checkpoints, records."""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from adaact_dist.data import LoaderConfig, ShardLoader, create_loader
from adaact_dist.train.checkpoint import CheckpointManager
from adaact_dist.train.evaluate import evaluate
from adaact_dist.train.job import fill_env, first_slurm_host
from adaact_dist.train.metrics import MetricsWriter, NullMetricsWriter
from adaact_dist.train.schedule import LRSchedule


def test_schedule_warms_up_linearly_then_cosines_to_min_lr():
    schedule = LRSchedule(peak_lr=4.0, total_steps=110, warmup_steps=10, warmup_lr=0.4, min_lr=4e-4)
    assert schedule.lr(0) == pytest.approx(0.4)
    assert schedule.lr(5) == pytest.approx(0.4 + 3.6 * 0.5)
    assert schedule.lr(10) == pytest.approx(4.0)
    middle = 10 + 99 / 2
    assert schedule.lr(int(middle)) > schedule.lr(int(middle) + 1)
    assert schedule.lr(109) == pytest.approx(4e-4)
    cosine = LRSchedule(peak_lr=1.0, total_steps=5)
    expected = [0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(5)]
    assert [cosine.lr(s) for s in range(5)] == pytest.approx(expected)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=9.0)
    assert cosine.apply(optimizer, 2) == pytest.approx(0.5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="Invalid warmup_steps=5"):
        LRSchedule(peak_lr=1.0, total_steps=5, warmup_steps=5)


class _Classifier(nn.Module):
    """Fixed weights, so every process computes the same predictions."""

    def __init__(self, classes: int):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3 * 8 * 8, classes)

    def forward(self, x):
        return self.linear(nn.functional.adaptive_avg_pool2d(x, 8).flatten(1))


def _loader(total: int, rank: int, world: int) -> ShardLoader:
    return create_loader(LoaderConfig(
        backend="synthetic", split="val", synthetic_samples=total, synthetic_classes=7,
        batch_size=2, image_size=8, rank=rank, world_size=world, seed=1,
    ))  # fmt: skip


SIZES = (7, 1, 12)  # odd, fewer samples than ranks, even


def _eval_worker(rank: int, world: int, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = _Classifier(7)
    for total in SIZES:
        result = evaluate(model, _loader(total, rank, world), device=torch.device("cpu"))
        results[(rank, total)] = result.as_dict()
    try:
        evaluate(model, _loader(7, rank, world), device=torch.device("cpu"), expected_count=8)
    except RuntimeError as error:
        results[(rank, "error")] = str(error)
    dist.destroy_process_group()


def test_distributed_eval_counts_every_sample_once(tmp_path):
    world = 2
    results = mp.Manager().dict()
    mp.spawn(_eval_worker, args=(world, str(tmp_path / "init"), results), nprocs=world)
    model = _Classifier(7)
    for total in SIZES:
        alone = evaluate(model, _loader(total, 0, 1), device=torch.device("cpu")).as_dict()
        assert alone["count"] == total
        for rank in range(world):
            both = results[(rank, total)]
            assert (both["count"], both["correct1"], both["correct5"]) == (
                alone["count"], alone["correct1"], alone["correct5"],
            )  # fmt: skip
            assert both["loss"] == pytest.approx(alone["loss"], rel=1e-6)
    assert "saw 7 samples over all ranks but the validation split has 8" in results[(0, "error")]
    # the split really is cut unevenly: 7 samples over 2 ranks, batches of 2
    assert [len(_loader(7, r, 2)) for r in range(2)] == [2, 2]
    assert [sum(len(y) for _, y in _loader(7, r, 2)) for r in range(2)] == [3, 4]


class _FakeEngine:
    """What CheckpointManager needs from a DeepSpeed engine; ``fail`` simulates a crash."""

    def __init__(self):
        self.fail = False
        self.loaded = None

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        folder = f"{save_dir}/{tag}"
        import os

        os.makedirs(folder, exist_ok=True)
        torch.save(client_state, f"{folder}/model.pt")
        if self.fail:
            raise OSError("disk full")

    def load_checkpoint(self, load_dir, tag, **kwargs):
        self.loaded = tag
        return f"{load_dir}/{tag}", torch.load(f"{load_dir}/{tag}/model.pt")


def test_checkpoints_are_atomic_and_keep_last_k_plus_best(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpt", keep_last=2, keep_best=True, rank=0)
    engine = _FakeEngine()
    scores = {10: 50.0, 20: 90.0, 30: 70.0, 40: None, 50: 80.0}
    for step, top1 in scores.items():
        manager.save(engine, step=step, epoch=step // 10, top1=top1, trainer_state={"s": step})
    kept = [info.step for info in manager.list()]
    assert kept == [20, 40, 50]  # the last two, and the best (top-1 90 at step 20)
    assert manager.best().step == 20 and manager.latest().step == 50

    engine.fail = True  # a crash while writing step 60 ...
    with pytest.raises(OSError):
        manager.save(engine, step=60, epoch=6, top1=None, trainer_state={"s": 60})
    assert (tmp_path / "ckpt" / ".tmp-step00000060").is_dir()
    assert manager.latest().step == 50  # ... leaves the previous checkpoints untouched
    assert [info.step for info in manager.list()] == [20, 40, 50]
    manager.remove_partial()
    assert not (tmp_path / "ckpt" / ".tmp-step00000060").exists()

    state, rank_state = manager.load(_FakeEngine(), manager.latest().path)
    assert state == {"s": 50} and set(rank_state) == {"rng"}
    meta = json.loads((manager.latest().path / "meta.json").read_text())
    assert meta["step"] == 50 and meta["top1"] == 80.0
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        manager.load(_FakeEngine(), tmp_path / "ckpt" / "step00000099")


def test_other_ranks_writer_has_the_same_methods_doing_nothing():
    def methods(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_")
        }

    assert methods(NullMetricsWriter) == methods(MetricsWriter)
    null = NullMetricsWriter()
    null.log_step({"step": 0})
    null.log_activations(0, {"fc": 1.0}, {})
    null.flush(durable=True)
    null.close()
    with pytest.raises(AttributeError):
        null.log_stpe({"step": 0})  # a misspelt call fails on every rank


def test_launcher_environments_become_torch_distributed_variables():
    slurm = {
        "SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[03-04,9]", "SLURM_JOB_ID": "4242",
    }  # fmt: skip
    assert fill_env(slurm) == "slurm"
    assert (slurm["RANK"], slurm["WORLD_SIZE"], slurm["LOCAL_RANK"]) == ("5", "16", "1")
    assert slurm["MASTER_ADDR"] == "gpu03" and slurm["MASTER_PORT"] == str(20000 + 4242)
    launched = {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "h",
        "MASTER_PORT": "1",
    }
    assert fill_env(launched) == "env" and launched["RANK"] == "1"  # deepspeed, torchrun
    alone: dict[str, str] = {}
    assert fill_env(alone) == "single"
    assert (alone["RANK"], alone["WORLD_SIZE"], alone["MASTER_ADDR"]) == ("0", "1", "127.0.0.1")
    assert first_slurm_host("node7") == "node7" and first_slurm_host("a[1-3],b2") == "a1"
    with pytest.raises(RuntimeError, match="not \\['MASTER_ADDR', 'MASTER_PORT'\\]"):
        fill_env({"RANK": "0", "WORLD_SIZE": "2"})


def test_a_checkpoint_without_digests_is_not_trusted(tmp_path):
    """Every checkpoint of this project records its files' digests; one whose meta lists
    none cannot be verified and is treated as damaged (the next older one is tried)."""
    manager = CheckpointManager(tmp_path / "ckpt", keep_last=2, keep_best=False, rank=0)
    info = manager.save(_FakeEngine(), step=10, epoch=1, top1=None, trainer_state={"s": 10})
    assert manager.verify(info) is None
    meta_path = info.path / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["files"]
    meta_path.write_text(json.dumps(meta))
    assert "no file digests" in manager.verify(info)


def test_adaact_state_of_another_format_is_refused_by_name():
    from adaact_dist.distributed.deepspeed_binding import FORMAT, FORMAT_VERSION, check_format

    check_format({FORMAT: FORMAT_VERSION}, "ckpt/zero/optimizer_state.pt")
    with pytest.raises(
        ValueError, match=r"ckpt/zero/optimizer_state.pt holds AdaAct state of format 0"
    ):
        check_format({FORMAT: 0}, "ckpt/zero/optimizer_state.pt")
    with pytest.raises(ValueError, match="format None"):
        check_format({}, "ckpt")
