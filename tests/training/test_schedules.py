"""Learning-rate schedules and LR scaling of the original, at pinned epochs; the per-step
schedule (warmup, cosine) at its boundaries and, by default, equal to the original at every step."""

import math

import pytest

from resnext_tf.recipes import RECIPES, recipe
from resnext_tf.training import schedules


@pytest.mark.parametrize(
    "epoch, lr",
    [(1, 0.1), (147, 0.1), (148, 0.01), (222, 0.01), (223, 0.001), (300, 0.001)],
)
def test_cifar_300_epochs(epoch, lr):
    assert schedules.learning_rate(0.1, recipe("cifar10"), epoch, 300) == pytest.approx(
        lr, rel=1e-12
    )


@pytest.mark.parametrize(
    "epoch, lr",
    [(1, 0.1), (30, 0.1), (31, 0.01), (60, 0.01), (61, 1e-3), (90, 1e-3), (91, 1e-4), (100, 1e-4)],
)
def test_imagenet_every_30_epochs(epoch, lr):
    assert schedules.learning_rate(0.1, recipe("imagenet"), epoch, 100) == pytest.approx(
        lr, rel=1e-12
    )


def test_cifar_schedule_follows_the_run_length():
    # 100 epochs: epoch/100 > 0.49 from epoch 50, > 0.74 from epoch 75.
    counts = [recipe("cifar100").decays(e, 100) for e in (49, 50, 74, 75)]
    assert counts == [0, 1, 1, 2]


@pytest.mark.parametrize(
    "dataset, batch, lr",
    [("imagenet", 256, 0.1), ("imagenet", 1024, 0.4), ("cifar10", 128, 0.1), ("cifar10", 64, 0.05)]
    + [("cifar100", 32, 0.025)],
)
def test_linear_scaling(dataset, batch, lr):
    assert recipe(dataset).scaled_lr(batch) == pytest.approx(lr)


def test_bad_epoch_and_dataset_are_named():
    with pytest.raises(ValueError, match="epoch=0"):
        schedules.learning_rate(0.1, recipe("imagenet"), 0, 100)
    with pytest.raises(ValueError, match="dataset='svhn'"):
        recipe("svhn")


# Steps per epoch of the default command lines: CIFAR 50,000 / 128, ImageNet 1,281,167 / 256.
DEFAULT_RUNS = [("cifar10", 0.1, 300, 50_000 // 128), ("imagenet", 0.1, 100, 1_281_167 // 256)]


@pytest.mark.parametrize("dataset, base, epochs, steps", DEFAULT_RUNS)
def test_recipes_hold_the_original_defaults(dataset, base, epochs, steps):
    known = RECIPES[dataset]
    assert (known.lr, known.epochs, known.num_train // known.batch_size) == (base, epochs, steps)


@pytest.mark.parametrize("dataset, base, epochs, steps", DEFAULT_RUNS)
def test_default_schedule_is_the_original_per_epoch_rate_at_every_step(
    dataset, base, epochs, steps
):
    # What the trainer assigned before the per-step schedule: learning_rate(...) of each epoch.
    before = [
        schedules.learning_rate(base, recipe(dataset), e, epochs) for e in range(1, epochs + 1)
    ]
    schedule = schedules.StepSchedule(base, recipe(dataset), epochs, steps)
    now = [schedule(s) for s in range(epochs * steps)]
    assert now == [lr for lr in before for _ in range(steps)]  # exact, not approximate
    assert [schedule.epoch_lr(e) for e in range(1, epochs + 1)] == before


@pytest.mark.parametrize(
    "warmup_epochs, steps, expected", [(0, 10, 0), (5, 10, 50), (0.25, 10, 2), (0.01, 10, 1)]
)
def test_warmup_steps_round_fractional_epochs(warmup_epochs, steps, expected):
    assert schedules.warmup_steps(warmup_epochs, steps) == expected


def test_warmup_ramps_per_step_then_the_step_schedule_decays():
    # ImageNet batch 8192 (Goyal et al.): 156 steps per epoch, 5 epochs of warmup to 3.2.
    schedule = schedules.StepSchedule(3.2, recipe("imagenet"), 90, 156, warmup_epochs=5)
    w = schedule.warmup_steps
    assert w == 780
    assert schedule(0) == pytest.approx(3.2 / 780, rel=1e-12)
    assert schedule(1) == pytest.approx(2 * 3.2 / 780, rel=1e-12)
    assert schedule(w - 1) == pytest.approx(3.2, rel=1e-12)  # warmup end reaches the base LR
    assert schedule(w) == 3.2
    assert schedule(30 * 156 - 1) == 3.2  # last step of epoch 30
    for epoch, lr in ((31, 0.32), (61, 0.032)):
        assert schedule((epoch - 1) * 156 - 1) == pytest.approx(lr * 10, rel=1e-12)
        assert schedule((epoch - 1) * 156) == pytest.approx(lr, rel=1e-12)
    assert schedule(90 * 156 - 1) == pytest.approx(0.032, rel=1e-12)  # the last step


def test_cosine_after_warmup_values_at_the_boundaries():
    base, epochs, steps = 0.4, 10, 20
    schedule = schedules.StepSchedule(
        base, recipe("cifar10"), epochs, steps, "cosine", warmup_epochs=1
    )
    w, total = 20, 200
    assert schedule(w - 1) == pytest.approx(base, rel=1e-12)
    assert schedule(w) == base  # cosine starts at the base rate
    assert schedule(w + (total - w) // 2) == pytest.approx(base / 2, rel=1e-12)
    last = base * 0.5 * (1 + math.cos(math.pi * (total - 1 - w) / (total - w)))
    assert schedule(total - 1) == pytest.approx(last, rel=1e-12)
    assert 0 < schedule(total - 1) < 1e-4  # zero is reached after the last step
    values = [schedule(s) for s in range(w, total)]
    assert all(a > b for a, b in zip(values[:-1], values[1:], strict=True))


def test_cosine_without_warmup_starts_at_the_base_rate():
    schedule = schedules.StepSchedule(0.1, recipe("imagenet"), 4, 5, "cosine")
    assert schedule(0) == 0.1 and schedule.warmup_steps == 0
    assert schedule(10) == pytest.approx(0.05, rel=1e-12)


def test_warmup_multiplies_a_step_decay_that_falls_inside_it():
    # 10 CIFAR epochs decay after epoch 4 (5/10 > 0.49); a 6-epoch warmup ramps to the decayed
    # rate from there on.
    schedule = schedules.StepSchedule(0.1, recipe("cifar10"), 10, 10, warmup_epochs=6)
    assert schedule(39) == pytest.approx(0.1 * 40 / 60, rel=1e-12)
    assert schedule(40) == pytest.approx(0.01 * 41 / 60, rel=1e-12)
    assert schedule(60) == pytest.approx(0.01, rel=1e-12)


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="lr_schedule='linear'"):
        schedules.StepSchedule(0.1, recipe("cifar10"), 10, 10, "linear")
