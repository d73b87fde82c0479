"""Learning-rate schedules and dataset-dependent defaults of fb.resnet.torch / ResNeXt.

Epochs are 1-based, as in the original (`epochNumber` starts at 1).
"""

import math

# Base learning rate of the original (`-LR 0.1`) and the batch size it belongs to: the ImageNet
# recipe uses 0.1 at batch 256, the CIFAR recipe 0.1 at batch 128 (REFERENCE.md: batch 64 -> 0.05,
# batch 32 -> 0.025, i.e. linear scaling).
BASE_LR = 0.1
REFERENCE_BATCH = {"imagenet": 256, "cifar10": 128, "cifar100": 128}

# Training length (`-nEpochs 0` resolves to these) and coupled L2 weight decay of the recipes.
DEFAULT_EPOCHS = {"imagenet": 100, "cifar10": 300, "cifar100": 300}
DEFAULT_WEIGHT_DECAY = {"imagenet": 1e-4, "cifar10": 5e-4, "cifar100": 5e-4}

# Step decay: x0.1 every 30 epochs on ImageNet; on CIFAR x0.1 once epoch/nEpochs exceeds 0.49 and
# again once it exceeds 0.74 (ResNeXt train.lua; 300 epochs -> drops before epochs 148 and 223).
DECAY_FACTOR = 0.1
IMAGENET_DECAY_EPOCHS = 30
CIFAR_DECAY_FRACTIONS = (0.49, 0.74)

DATASETS = tuple(DEFAULT_EPOCHS)


def _check_dataset(dataset):
    if dataset not in DATASETS:
        raise ValueError(
            f"Unknown dataset; received dataset={dataset!r}; expected one of {DATASETS}."
        )


def default_learning_rate(dataset, batch_size):
    """Linearly scaled base learning rate: 0.1 * batch_size / reference batch of the recipe.

    Args:
        dataset: "imagenet", "cifar10" or "cifar100".
        batch_size: global batch size.

    Returns:
        The learning rate of the first epoch.
    """
    _check_dataset(dataset)
    return BASE_LR * batch_size / REFERENCE_BATCH[dataset]


def decay_count(dataset, epoch, num_epochs):
    """Number of x0.1 decays applied at `epoch` (1-based) of a `num_epochs` run."""
    _check_dataset(dataset)
    if epoch < 1:
        raise ValueError(f"epoch is 1-based; received epoch={epoch!r}; expected >= 1.")
    if dataset == "imagenet":
        return (epoch - 1) // IMAGENET_DECAY_EPOCHS
    # Same float comparison as the original, so 147/300 == 0.49 does not decay yet.
    return sum(epoch / num_epochs > fraction for fraction in CIFAR_DECAY_FRACTIONS)


def learning_rate(base_lr, dataset, epoch, num_epochs):
    """Scheduled learning rate of `epoch` (1-based).

    Args:
        base_lr: learning rate of the first epoch.
        dataset: "imagenet", "cifar10" or "cifar100".
        epoch: 1-based epoch number.
        num_epochs: total epochs of the run (used by the CIFAR schedule).

    Returns:
        base_lr * 0.1 ** decay_count(...).
    """
    return base_lr * math.pow(DECAY_FACTOR, decay_count(dataset, epoch, num_epochs))
