"""Learning-rate schedules and LR scaling of the original, at pinned epochs."""

import pytest

from resnext_tf.training import schedules


@pytest.mark.parametrize(
    "epoch, lr",
    [(1, 0.1), (147, 0.1), (148, 0.01), (222, 0.01), (223, 0.001), (300, 0.001)],
)
def test_cifar_300_epochs(epoch, lr):
    assert schedules.learning_rate(0.1, "cifar10", epoch, 300) == pytest.approx(lr, rel=1e-12)


@pytest.mark.parametrize(
    "epoch, lr",
    [(1, 0.1), (30, 0.1), (31, 0.01), (60, 0.01), (61, 1e-3), (90, 1e-3), (91, 1e-4), (100, 1e-4)],
)
def test_imagenet_every_30_epochs(epoch, lr):
    assert schedules.learning_rate(0.1, "imagenet", epoch, 100) == pytest.approx(lr, rel=1e-12)


def test_cifar_schedule_follows_the_run_length():
    # 100 epochs: epoch/100 > 0.49 from epoch 50, > 0.74 from epoch 75.
    counts = [schedules.decay_count("cifar100", e, 100) for e in (49, 50, 74, 75)]
    assert counts == [0, 1, 1, 2]


@pytest.mark.parametrize(
    "dataset, batch, lr",
    [("imagenet", 256, 0.1), ("imagenet", 1024, 0.4), ("cifar10", 128, 0.1), ("cifar10", 64, 0.05)]
    + [("cifar100", 32, 0.025)],
)
def test_linear_scaling(dataset, batch, lr):
    assert schedules.default_learning_rate(dataset, batch) == pytest.approx(lr)


def test_bad_epoch_and_dataset_are_named():
    with pytest.raises(ValueError, match="epoch=0"):
        schedules.learning_rate(0.1, "imagenet", 0, 100)
    with pytest.raises(ValueError, match="dataset='svhn'"):
        schedules.default_learning_rate("svhn", 128)
