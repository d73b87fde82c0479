"""TrainConfig defaults per dataset, validation, and the absl flags that build it."""

import subprocess
import sys
import warnings

import pytest
from absl import app
from absl import flags as absl_flags
from train_helpers import REPO

import flags as resnext_flags
from resnext_tf.training import TrainConfig
from resnext_tf.training.config import GROUPS


def parse(argv, datasets=("cifar10", "cifar100")):
    flag_values = absl_flags.FlagValues()
    resnext_flags.define_flags(datasets, flag_values)
    flag_values(["prog", *argv])
    return resnext_flags.config_from_flags(flag_values)


def test_cifar_recipe_defaults():
    config = parse(["--depth=29", "--cardinality=16", "--base_width=64"])
    assert (config.dataset, config.depth, config.cardinality, config.base_width) == (
        "cifar10",
        29,
        16,
        64,
    )
    assert (config.batch_size, config.lr, config.weight_decay, config.epochs) == (
        128,
        0.1,
        5e-4,
        300,
    )
    assert (config.momentum, config.nesterov, config.shortcut_type) == (0.9, True, "B")
    assert config.model_dir == "runs/cifar10_resnext29_16x64d"


def test_imagenet_recipe_defaults():
    argv = ["--data_dir=DATA", "--depth=50", "--cardinality=32", "--base_width=4"]
    config = parse([*argv, "--batch_size=256"], datasets=("imagenet",))
    assert (config.dataset, config.lr, config.weight_decay, config.epochs) == (
        "imagenet",
        0.1,
        1e-4,
        100,
    )


def test_lr_scales_with_the_batch_unless_given():
    assert parse(["--batch_size=64"]).lr == pytest.approx(0.05)
    assert parse(["--batch_size=64", "--lr=0.3"]).lr == 0.3
    assert parse(["--batch_size=1024"], datasets=("imagenet",)).lr == pytest.approx(0.4)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--dtype=float64"], ["float64", "mixed_bfloat16"]),
        (["--distribution_strategy=horovod"], ["horovod", "multi_worker_mirrored"]),
        (["--bottleneck_type=resnext_D"], ["resnext_D", "resnext_C"]),
        (["--dataset=imagenet"], ["imagenet", "cifar100"]),
    ],
)
def test_bad_flag_values_name_value_and_choices(argv, words):
    with pytest.raises(absl_flags.IllegalFlagValueError) as error:
        parse(argv)
    assert all(word in str(error.value) for word in words)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--depth=30"], r"CIFAR stem; received depth=30; expected 9n \+ 2"),
        (["--reset_classifier"], "num_classes=None"),
        (["--epochs=10", "--epoch_number=11"], "epoch_number=11"),
        (["--overwrite"], "needs resume='none'.*received resume='auto'"),
        (["--overwrite", "--resume=none", "--test_only"], "test_only=True"),
        (["--model_dir=gs://bucket/run"], "model_dir='gs://bucket/run'"),
    ],
)
def test_inconsistent_flags_are_usage_errors(argv, message):
    with pytest.raises(app.UsageError, match=message):
        parse(argv)


@pytest.mark.parametrize(
    "argv, message",
    [
        # NaN passes every bound; these ran until the first NaN loss stopped them.
        (["--lr=nan"], "lr must be a finite number; received lr=nan."),
        (["--lr=inf"], "lr must be a finite number; received lr=inf."),
        (
            ["--weight_decay=nan"],
            "weight_decay must be a finite number; received weight_decay=nan.",
        ),
        (["--momentum=nan"], "momentum must be a finite number; received momentum=nan."),
        (["--seed=4294967296"], "seed must be in [0, 4294967296); received seed=4294967296."),
    ],
)
def test_non_finite_floats_and_seeds_out_of_range_are_usage_errors(argv, message):
    with pytest.raises(app.UsageError) as error:
        parse(argv)
    assert str(error.value) == message


def test_negative_seed_is_refused_where_it_enters():
    # It ended in numpy's "Seed must be between 0 and 2**32 - 1" traceback once training began.
    with pytest.raises(absl_flags.IllegalFlagValueError, match="not an integer in the range"):
        parse(["--seed=-1"])
    with pytest.raises(ValueError) as error:
        TrainConfig(seed=-1)
    assert str(error.value) == "seed must be in [0, 4294967296); received seed=-1."


def test_imagenet_depth_and_ten_crop_checks():
    with pytest.raises(ValueError, match=r"depth=29; expected one of \(50, 101, 152\)"):
        TrainConfig(dataset="imagenet", depth=29)
    with pytest.raises(ValueError, match="ten_crop=True with dataset='cifar10'"):
        TrainConfig(dataset="cifar10", ten_crop=True)


@pytest.mark.parametrize(
    "datasets, lines",
    [
        (("cifar10", "cifar100"), ["(default: 128)", "(default: 10 on cifar10, 100 on cifar100)"]),
        (("imagenet",), ["(default: 256)", "0.1 * batch_size / 256", "every 30 epochs"]),
    ],
)
def test_help_lists_groups_in_order_with_the_recipe_defaults(datasets, lines):
    flag_values = absl_flags.FlagValues()
    resnext_flags.define_flags(datasets, flag_values)
    text = " ".join(resnext_flags.help_text(flag_values).split())
    headings = [text.index(f"{group} flags:") for group in GROUPS]
    assert headings == sorted(headings)
    assert text.index("--depth") < headings[1] < text.index("]ten_crop") < headings[2]
    assert all(line in text for line in lines)


def test_entry_point_help_is_grouped():
    result = subprocess.run(
        [sys.executable, "run_imagenet.py", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "model flags:" in result.stdout and "performance flags:" in result.stdout
    assert "(default: 'imagenet')" in result.stdout


def test_large_batch_options_default_to_the_original_recipe():
    for datasets in (("cifar10",), ("imagenet",)):
        config = parse([], datasets=datasets)
        assert (config.lr_schedule, config.warmup_epochs, config.label_smoothing) == ("step", 0, 0)
        assert (config.no_weight_decay_on, config.ema_decay, config.ema_warmup) == ((), 0.0, True)


@pytest.mark.parametrize("datasets", [("cifar10", "cifar100"), ("imagenet",)])
def test_large_batch_options_parse_on_both_entry_points(datasets):
    argv = ["--lr_schedule=cosine", "--warmup_epochs=2.5", "--label_smoothing=0.1"]
    argv += ["--no_weight_decay_on=bn,bias", "--ema_decay=0.9999", "--noema_warmup"]
    config = parse(argv, datasets=datasets)
    assert (config.lr_schedule, config.warmup_epochs, config.label_smoothing) == (
        "cosine",
        2.5,
        0.1,
    )
    assert (config.no_weight_decay_on, config.ema_decay) == (("bn", "bias"), 0.9999)
    assert config.ema_warmup is False


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--epochs=3", "--warmup_epochs=3"],
            r"warmup_epochs must be >= 0 and < epochs; received warmup_epochs=3.0, epochs=3",
        ),
        (["--label_smoothing=1"], r"label_smoothing must be in \[0, 1\); received "),
        (["--ema_decay=1"], r"ema_decay must be in \[0, 1\); received ema_decay=1.0"),
        (
            ["--no_weight_decay_on=bn,gamma"],
            r"received no_weight_decay_on='gamma'; expected one of \('bn', 'bias'\)",
        ),
    ],
)
def test_bad_large_batch_options_are_usage_errors(argv, message):
    with pytest.raises(app.UsageError, match=message):
        parse(argv)


def test_unknown_schedule_and_negative_warmup_are_flag_errors():
    with pytest.raises(absl_flags.IllegalFlagValueError, match="step|cosine"):
        parse(["--lr_schedule=linear"])
    with pytest.raises(absl_flags.IllegalFlagValueError, match="warmup_epochs"):
        parse(["--warmup_epochs=-1"])


def test_large_linearly_scaled_batch_without_warmup_warns():
    with pytest.warns(UserWarning, match=r"batch_size=2048 .* --warmup_epochs=5"):
        TrainConfig(dataset="imagenet", batch_size=2048)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainConfig(dataset="imagenet", batch_size=1024)
        TrainConfig(dataset="imagenet", batch_size=2048, warmup_epochs=5)
        TrainConfig(dataset="imagenet", batch_size=2048, lr=0.1)


def test_overwrite_is_off_by_default_and_goes_with_a_fresh_start():
    assert parse([]).overwrite is False
    config = parse(["--resume=none", "--overwrite"])
    assert (config.resume, config.overwrite) == ("none", True)
    assert parse(["--resume=/runs/other", "--overwrite"]).overwrite
