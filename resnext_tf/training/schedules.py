"""Learning-rate schedules: the original's step decays (from the dataset's recipe), warmup, cosine.

Epochs are 1-based, as in the original (`epochNumber` starts at 1). The schedules take the
dataset's `resnext_tf.recipes.Recipe` itself, resolved once by the run's configuration.
"""

import math

from resnext_tf.errors import check_choice

# The step schedule multiplies the rate by this at each of the recipe's decay points.
DECAY_FACTOR = 0.1


def learning_rate(base_lr, recipe, epoch, num_epochs):
    """Returns base_lr * 0.1 ** (decays of `recipe`'s step schedule up to `epoch`).

    Args:
        base_lr: learning rate of the first epoch.
        recipe: the dataset's resnext_tf.recipes.Recipe.
        epoch: 1-based epoch number.
        num_epochs: total epochs of the run (the CIFAR decay points are fractions of it).
    """
    if epoch < 1:
        raise ValueError(f"epoch is 1-based; received epoch={epoch!r}; expected >= 1.")
    return base_lr * math.pow(DECAY_FACTOR, recipe.decays(epoch, num_epochs))


# "step" is the original's schedule (above); "cosine" decays to zero after the warmup.
LR_SCHEDULES = ("step", "cosine")


def warmup_steps(warmup_epochs, steps_per_epoch):
    """Steps of a `warmup_epochs` (fractional) warmup: at least one when the warmup is on."""
    if warmup_epochs <= 0:
        return 0
    return max(1, round(warmup_epochs * steps_per_epoch))


class StepSchedule:
    """Learning rate of every training step: optional linear warmup, then the step or cosine
    schedule.

    Steps count from the start of the run (0-based `global_step`), so a resumed run continues
    the same values; without warmup the step schedule is the original recipe bit for bit. The
    warmup is Goyal et al.'s (2017) per-step linear ramp; the formulas are in docs/training.md,
    "Large batch".

    Args:
        base_lr: the (linearly scaled) learning rate that warmup reaches.
        recipe: the dataset's resnext_tf.recipes.Recipe (decay points of the step schedule).
        num_epochs: epochs of the run.
        steps_per_epoch: training steps per epoch.
        kind: one of LR_SCHEDULES.
        warmup_epochs: warmup length in epochs, fractions allowed; 0 turns warmup off.
    """

    def __init__(
        self, base_lr, recipe, num_epochs, steps_per_epoch, kind="step", warmup_epochs=0.0
    ):
        check_choice("lr_schedule", kind, LR_SCHEDULES)
        self.base_lr = base_lr
        self.recipe = recipe
        self.num_epochs = num_epochs
        self.steps_per_epoch = steps_per_epoch
        self.kind = kind
        self.total_steps = num_epochs * steps_per_epoch
        self.warmup_steps = warmup_steps(warmup_epochs, steps_per_epoch)

    def __call__(self, global_step):
        """Learning rate of the step with 0-based index `global_step` of the run."""
        if self.kind == "step":
            epoch = global_step // self.steps_per_epoch + 1
            lr = learning_rate(self.base_lr, self.recipe, epoch, self.num_epochs)
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
