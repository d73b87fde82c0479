"""Optimisation flags: batch, SGD hyper-parameters, schedule length, seed, smoke-run limits,
and the large-batch options (warmup, cosine schedule, label smoothing, weight-decay exclusions,
weight EMA), which default to the original recipe."""

from absl import flags

from resnext_tf.training.optimizer import NO_DECAY_KINDS
from resnext_tf.training.schedules import LR_SCHEDULES


def define_flags(flag_values):
    """Defines batch_size, lr, momentum, weight_decay, nesterov, epochs, epoch_number, seed,
    steps_per_epoch, train_steps, lr_schedule, warmup_epochs, label_smoothing,
    no_weight_decay_on and ema_decay."""
    flags.DEFINE_integer(
        "batch_size",
        None,
        "Global batch size over all replicas (default: 256 on ImageNet, 128 on CIFAR).",
        1,
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "lr",
        None,
        "Initial learning rate (default: linear scaling, 0.1 * batch_size / 256 on ImageNet, "
        "0.1 * batch_size / 128 on CIFAR).",
        0.0,
        flag_values=flag_values,
    )
    flags.DEFINE_float("momentum", 0.9, "SGD momentum.", 0.0, 1.0, flag_values=flag_values)
    flags.DEFINE_float(
        "weight_decay",
        None,
        "Coupled L2 weight decay on every parameter (default: 1e-4 ImageNet, 5e-4 CIFAR).",
        0.0,
        flag_values=flag_values,
    )
    flags.DEFINE_boolean("nesterov", True, "Nesterov momentum.", flag_values=flag_values)
    flags.DEFINE_integer(
        "epochs",
        None,
        "Total epochs (default: 100 ImageNet, 300 CIFAR); also sets the CIFAR decay points.",
        1,
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "epoch_number",
        1,
        "First epoch of a fresh run (1-based); a resumed run continues from its checkpoint.",
        1,
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "seed", 0, "Seed of initialisation, shuffling and augmentation.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "steps_per_epoch",
        None,
        "Cap on the batches of one epoch (smoke runs); default: the whole training split.",
        1,
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "train_steps",
        None,
        "Stop once this many global steps are done (smoke runs); default: no limit.",
        1,
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "lr_schedule",
        "step",
        LR_SCHEDULES,
        "step: the original's x0.1 decays (every 30 epochs on ImageNet, after 49% and 74% of "
        "the epochs on CIFAR); cosine: per-step cosine decay to zero after the warmup.",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "warmup_epochs",
        0.0,
        "Linear per-step warmup from lr / warmup_steps to --lr over this many epochs (fractions "
        "allowed; must be < --epochs); 0: none, as the original. 5 for global batches over 1k "
        "(Goyal et al. 2017).",
        0.0,
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "label_smoothing",
        0.0,
        "Label smoothing eps of the training loss, in [0, 1); 0: plain cross-entropy.",
        0.0,
        1.0,
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "no_weight_decay_on",
        [],
        f"Comma-separated kinds of variables without weight decay, from {','.join(NO_DECAY_KINDS)}"
        " (bn: BatchNorm gamma and beta; bias: the classifier bias); default: decay on all, as "
        "the original.",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "ema_decay",
        0.0,
        "Decay of an exponential moving average of all weights (BatchNorm statistics included), "
        "e.g. 0.9999; the EMA is validated (own log line and CSV columns), checkpointed and "
        "exported. 0: off.",
        0.0,
        1.0,
        flag_values=flag_values,
    )
