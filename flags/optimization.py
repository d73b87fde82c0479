"""Optimisation flags: batch, SGD hyper-parameters, schedule length, seed, smoke-run limits."""

from absl import flags


def define_flags(flag_values):
    """Defines batch_size, lr, momentum, weight_decay, nesterov, epochs, epoch_number, seed,
    steps_per_epoch and train_steps."""
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
