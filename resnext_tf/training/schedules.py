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


# Shapes of the per-step schedule: "step" is the original's (above), "cosine" decays to zero over
# the steps after the warmup.
LR_SCHEDULES = ("step", "cosine")


def warmup_steps(warmup_epochs, steps_per_epoch):
    """Steps of a `warmup_epochs` (fractional) warmup: at least one when the warmup is on."""
    if warmup_epochs <= 0:
        return 0
    return max(1, round(warmup_epochs * steps_per_epoch))


class StepSchedule:
    """Learning rate of every training step: optional linear warmup, then the step or cosine
    schedule.

    Steps are counted from the start of the run (0-based `global_step`: the step taken after
    `global_step` earlier ones), so a resumed run continues the same values. Without warmup,
    the step schedule returns `learning_rate(...)` of the step's epoch unchanged, i.e. the
    original recipe bit for bit.

    During the first W = warmup_steps(...) steps the scheduled rate is multiplied by
    (global_step + 1) / W: a linear ramp from base/W to the full rate at step W - 1, as the
    gradual warmup of Goyal et al. (2017), which ramps the rate per iteration. Cosine decays
    base * (1 + cos(pi * t)) / 2 with t = (global_step - W) / (total - W) going from 0 after
    the warmup towards 1 at the end of the run.

    Args:
        base_lr: the (linearly scaled) learning rate that warmup reaches.
        dataset: "imagenet", "cifar10" or "cifar100" (decay points of the step schedule).
        num_epochs: epochs of the run.
        steps_per_epoch: training steps per epoch.
        kind: one of LR_SCHEDULES.
        warmup_epochs: warmup length in epochs, fractions allowed; 0 turns warmup off.
    """

    def __init__(
        self, base_lr, dataset, num_epochs, steps_per_epoch, kind="step", warmup_epochs=0.0
    ):
        _check_dataset(dataset)
        if kind not in LR_SCHEDULES:
            raise ValueError(
                f"Unknown lr_schedule; received lr_schedule={kind!r}; expected one of "
                f"{LR_SCHEDULES}."
            )
        self.base_lr = base_lr
        self.dataset = dataset
        self.num_epochs = num_epochs
        self.steps_per_epoch = steps_per_epoch
        self.kind = kind
        self.total_steps = num_epochs * steps_per_epoch
        self.warmup_steps = warmup_steps(warmup_epochs, steps_per_epoch)

    def __call__(self, global_step):
        """Learning rate of the step with 0-based index `global_step` of the run."""
        if self.kind == "step":
            epoch = global_step // self.steps_per_epoch + 1
            lr = learning_rate(self.base_lr, self.dataset, epoch, self.num_epochs)
        elif global_step < self.warmup_steps:
            lr = self.base_lr
        else:
            decay_steps = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (global_step - self.warmup_steps) / decay_steps)
            lr = self.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        if global_step < self.warmup_steps:
            lr = lr * (global_step + 1) / self.warmup_steps
        return lr

    def epoch_lr(self, epoch):
        """Learning rate of the last step of `epoch` (1-based), the value the logs report."""
        return self(epoch * self.steps_per_epoch - 1)
