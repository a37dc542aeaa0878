"""Config: YAML onto dataclasses, --set precedence, one clear message per bad value, recipes."""

from __future__ import annotations

import pytest
import yaml

from adaact_dist.data import LoaderConfig
from adaact_dist.data.config import BACKENDS
from adaact_dist.train.components import check_model_name
from adaact_dist.train.config import ConfigValueError, DataConfig, TrainConfig
from adaact_dist.train.config_io import (
    ConfigError,
    ConfigTypeError,
    config_error,
    dump_config,
    load_config,
    resolve_config_path,
)
from adaact_dist.train.ds_config import deepspeed_config
from adaact_dist.train.plan import make_plan
from tests.train.helpers import TINY, train, write_config


def _yaml(tmp_path, text: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("optim:\n  lrr: 1.0\n", "Unknown config key 'optim.lrr' in {path} (optim has: name, lr,"),
        ("optimizer:\n  lr: 1.0\n", "Unknown config section 'optimizer' in {path}"),
        ("optim:\n  lr: fast\n", "Invalid optim.lr='fast' in {path}: must be a number"),
        ("optim:\n  lr: -1\n", "Invalid optim.lr=-1.0 in {path}: must be a finite number > 0"),
        ("run:\n  seed: 1.5\n", "Invalid run.seed=1.5 in {path}: must be an integer"),
        ("model:\n  channels_last: 1\n", "Invalid model.channels_last=1 in {path}: must be true"),
        ("optim:\n  betas: [0.9]\n", "Invalid optim.betas=[0.9] in {path}: must be a list of 2"),
        (
            "data:\n  backend: tfrecord\n",
            "Invalid data.backend='tfrecord' in {path}: must be one of",
        ),
        (
            "distributed:\n  zero_stage: 3\n",
            "Invalid distributed.zero_stage=3 in {path}: must be 0, 1",
        ),
        ("schedule:\n  epochs: 5\n  warmup_epochs: 5\n", "Invalid schedule.warmup_epochs=5.0 in"),
        ("optim: 4.0\n", "Invalid optim=4.0 in {path}: must be a mapping"),
        ("- a\n- b\n", "{path} must hold a mapping of sections, not list"),
    ],
)
def test_bad_config_gives_one_message_naming_key_and_file(tmp_path, text, message):
    path = _yaml(tmp_path, "data:\n  backend: synthetic\n" + text if text[0] != "-" else text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message.format(path=path) in str(caught.value)


def test_wrong_type_is_a_type_error_and_impossible_value_a_value_error(tmp_path):
    with pytest.raises(ConfigTypeError):
        load_config(None, ["data.backend=synthetic", "optim.lr=[1]"])
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["data.backend=synthetic", "optim.lr=0"])
    assert not isinstance(caught.value, TypeError)
    assert "in --set optim.lr=0" in str(caught.value)


def test_the_backends_and_their_worker_rule_are_the_data_packages():
    for backend in BACKENDS:
        assert DataConfig(backend=backend, root="/shards", num_workers=int(backend != "memory"))
    with pytest.raises(ConfigValueError) as trainer:
        DataConfig(backend="dali", root="/shards", num_workers=0)
    with pytest.raises(ValueError) as loader:
        LoaderConfig(backend="dali", split="train", shards="/shards", batch_size=2, num_workers=0)
    assert str(trainer.value).partition(": ")[2] == str(loader.value).partition(": ")[2]


def test_cli_overrides_beat_yaml_which_beats_defaults(tmp_path):
    path = write_config(tmp_path / "c.yaml", optim={"lr": 0.5, "weight_decay": 0.01})
    config = load_config(path, ["optim.lr=2", "model.kwargs.stem_width=4"])
    assert config.optim.lr == 2.0  # --set
    assert config.optim.weight_decay == 0.01  # YAML
    assert config.optim.eps == 1e-8  # default
    assert config.model.kwargs == {"channels": [8, 16, 32, 64], "stem_width": 4}


def test_yaml_float_quirk_and_dump_round_trip(tmp_path):
    path = _yaml(tmp_path, "data:\n  backend: synthetic\noptim:\n  eps: 1e-8\n")
    config = load_config(path)  # PyYAML reads 1e-8 as a string; it is still a number here
    assert config.optim.eps == 1e-8
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(config))
    assert load_config(again) == config


def test_batch_that_does_not_divide_names_key_and_file(tmp_path):
    path = write_config(
        tmp_path / "c.yaml", data={"global_batch_size": 2048, "micro_batch_size": 256}
    )
    config = load_config(path)
    with pytest.raises(ConfigValueError) as caught:
        make_plan(config, world_size=3)
    message = str(config_error(config, caught.value))
    assert message.startswith(f"Invalid data.global_batch_size=2048 in {path}: must be divisible")
    assert "world size (3) x data.micro_batch_size (256)" in message


def test_plan_derives_micro_batch_accumulation_and_scales_lr_linearly():
    config = load_config("a2_resnet50")
    plan = make_plan(config, world_size=2)  # the paper: 512 x 2 GPUs x accumulation 2
    assert (plan.micro_batch_size, plan.accumulation_steps, plan.lr) == (512, 2, 4.0)
    plan = make_plan(config, world_size=8)
    assert (plan.micro_batch_size, plan.accumulation_steps, plan.lr) == (256, 1, 4.0)
    half = load_config("a2_resnet50", ["data.global_batch_size=1024"])
    assert make_plan(half, world_size=8).lr == pytest.approx(2.0)
    vit = make_plan(load_config("a2_vit_small", ["data.global_batch_size=4096"]), world_size=16)
    assert (vit.lr, vit.warmup_lr, vit.min_lr) == pytest.approx((8.0, 0.8, 8e-4))
    with pytest.raises(ConfigValueError, match="even: Mixup/CutMix"):
        make_plan(load_config("a2_resnet50", ["data.global_batch_size=2046"]), world_size=2)


def test_recipes_hold_the_papers_hyperparameters():
    r50, r101, vit = (load_config(n) for n in ("a2_resnet50", "a2_resnet101", "a2_vit_small.yaml"))
    for config in (r50, r101, vit):
        assert config.optim.name == "adaact" and config.optim.lr == 4.0
        assert config.optim.betas == (0.9, 0.999) and config.optim.eps == 1e-8
        assert config.data.global_batch_size == 2048 == config.optim.lr_base_batch_size
        assert config.augmentation.auto_augment == "rand-m7-mstd0.5-inc1"
        assert config.augmentation.crop_pct == 0.95 and config.augmentation.cutmix_alpha == 1.0
        assert config.distributed.zero_stage == 1 and config.distributed.precision == "bf16"
        assert config.schedule.name == "cosine" and config.loss.name == "ce"
    assert (r50.model.name, r101.model.name) == ("resnet50", "resnet101")
    for config in (r50, r101):
        assert (config.optim.weight_decay, config.schedule.epochs) == (1e-4, 100)
        assert (config.schedule.warmup_epochs, config.schedule.min_lr) == (0, 0)
        assert (config.augmentation.mixup_alpha, config.augmentation.re_prob) == (0.1, 0.0)
        assert config.model.drop_path_rate == 0.05
    assert vit.model.name == "deit_small_patch16_224" and vit.model.drop_path_rate == 0.1
    assert (vit.optim.weight_decay, vit.schedule.epochs, vit.schedule.warmup_epochs) == (
        2e-7,
        150,
        5,
    )
    assert (vit.schedule.warmup_lr, vit.schedule.min_lr) == (0.4, 4e-4)
    assert (vit.augmentation.mixup_alpha, vit.augmentation.re_prob) == (0.8, 0.25)
    assert vit.augmentation.re_mode == "pixel" and vit.loss.label_smoothing == 0.1
    demo = load_config("demo")
    assert demo.data.builtin == "digits" and demo.distributed.precision == "fp32"


def test_deepspeed_config_is_generated_from_the_config():
    config = load_config("a2_vit_small")
    ds = deepspeed_config(config, make_plan(config, world_size=2))
    assert ds["train_batch_size"] == 2048
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (256, 4)
    # no clipping: no global gradient norm, whose check reads the device every step
    assert ds["zero_optimization"] == {"stage": 1, "compute_grad_norm": False}
    assert ds["torch_autocast"] == {
        "enabled": True,
        "dtype": "bfloat16",
        "lower_precision_safe_modules": [],  # gradients reduced in fp32
    }
    assert not ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    bf16_reduce = load_config("a2_vit_small", ["distributed.grad_reduce_dtype=autocast"])
    ds_bf16_reduce = deepspeed_config(bf16_reduce, make_plan(bf16_reduce, world_size=2))
    assert ds_bf16_reduce["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    native = load_config("a2_vit_small", ["distributed.precision_mode=deepspeed"])
    ds = deepspeed_config(native, make_plan(native, world_size=2))
    assert ds["bf16"] == {"enabled": True, "check_grad_overflow": False}
    assert not ds["torch_autocast"]["enabled"]
    extra = load_config(
        "demo", ["distributed.deepspeed_extra={zero_optimization: {reduce_bucket_size: 1000}}"]
    )
    ds = deepspeed_config(extra, make_plan(extra, world_size=2))
    assert ds["zero_optimization"] == {
        "stage": 1,
        "compute_grad_norm": False,
        "reduce_bucket_size": 1000,
    }
    for needs_norm in (
        ["optim.gradient_clipping=1.0"],
        ["distributed.deepspeed_extra={zero_optimization: {offload_optimizer: {device: cpu}}}"],
        ["distributed.deepspeed_extra={data_types: {grad_accum_dtype: fp32}}"],
    ):
        normed = load_config("demo", needs_norm)
        assert (
            "compute_grad_norm"
            not in deepspeed_config(normed, make_plan(normed, world_size=2))["zero_optimization"]
        )
    clash = load_config("demo", ["distributed.deepspeed_extra={train_batch_size: 7}"])
    with pytest.raises(ConfigValueError, match="free of 'train_batch_size'"):
        deepspeed_config(clash, make_plan(clash, world_size=2))


def test_bare_names_resolve_in_configs_and_missing_ones_list_the_choices():
    assert resolve_config_path("demo").name == "demo.yaml"
    assert resolve_config_path("a2_resnet50.yaml").name == "a2_resnet50.yaml"
    with pytest.raises(ConfigError, match="available: a2_resnet101, a2_resnet50"):
        resolve_config_path("resnet9000")


def test_defaults_are_valid_except_for_the_missing_shards():
    with pytest.raises(ConfigError, match=r"Invalid data.root=None \(default\)"):
        load_config(None)
    assert isinstance(load_config(None, ["data.backend=synthetic"]), TrainConfig)


def test_cli_print_config_with_overrides_and_bad_config_exit_code(tmp_path):
    done = train(
        "--config", "a2_resnet50", "--set", "optim.lr=2.0", "data.root=/x", "--print-config"
    )
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    assert printed["optim"]["lr"] == 2.0 and printed["data"]["root"] == "/x"
    assert printed["model"]["name"] == "resnet50"
    assert "# derived: world_size=1, global_batch_size=2048, micro_batch_size=512" in done.stdout
    out = tmp_path / "out"
    bad = write_config(
        tmp_path / "bad.yaml", TINY, optim={"lr": -1.0}, run={"output_dir": str(out)}
    )
    failed = train("--config", str(bad))
    assert failed.returncode == 2
    assert failed.stderr.strip() == (
        f"config error: Invalid optim.lr=-1.0 in {bad}: must be a finite number > 0"
    )
    assert not out.exists()  # stopped before any work


def test_unknown_timm_model_is_a_config_error_with_suggestions():
    config = load_config("demo", ["model.name=resnet51"])
    with pytest.raises(ConfigValueError) as caught:
        check_model_name(config)
    message = str(config_error(config, caught.value))
    assert message.startswith("Invalid model.name='resnet51' in --set model.name=resnet51: must")
    assert "similar:" in message
    check_model_name(load_config("a2_vit_small"))  # the recipes' names exist


@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_per_tensor_optimizers_are_refused_on_zero_partitions(tmp_path, name):
    path = _yaml(tmp_path, f"data:\n  backend: synthetic\noptim:\n  name: {name}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)  # distributed.zero_stage defaults to 1
    assert str(caught.value).startswith(
        f"Invalid distributed.zero_stage=1 (default): must be 0 with optim.name={name!r}"
    )
    assert "set distributed.zero_stage: 0" in str(caught.value)
    with pytest.raises(ConfigError, match=r"zero_stage=2 in --set distributed.zero_stage=2"):
        load_config(path, ["distributed.zero_stage=2"])
    assert load_config(path, ["distributed.zero_stage=0"]).optim.name == name
