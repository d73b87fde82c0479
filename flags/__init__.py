"""absl flags of run_cifar.py and run_imagenet.py, grouped by concern, and their conversion to a
plain TrainConfig (library code never reads FLAGS).

Every flag has the name of the TrainConfig field it sets. Flags left at None take the
original's default for the dataset (REFERENCE.md), resolved by TrainConfig.
"""

import dataclasses

from absl import app
from absl import flags as absl_flags
from absl import logging as absl_logging

from flags import checkpointing, data, distribution, model, optimization, performance
from resnext_tf.training.config import TrainConfig

_GROUPS = (model, data, optimization, distribution, checkpointing, performance)


def define_flags(datasets, flag_values=absl_flags.FLAGS):
    """Defines every flag of a training entry point.

    Args:
        datasets: datasets the entry point accepts; the first is the default.
        flag_values: absl FlagValues to define into (tests pass their own).

    Returns:
        The group modules, for the entry point to adopt as key flags (shown by --help).
    """
    data.define_flags(datasets, flag_values)
    for group in _GROUPS:
        if group is not data:
            group.define_flags(flag_values)
    return _GROUPS


def config_from_flags(flag_values=absl_flags.FLAGS):
    """Builds the TrainConfig from parsed flags.

    Raises:
        app.UsageError: when the values do not make a valid configuration (the message names
            the bad value and the allowed ones).
    """
    if "verbosity" in flag_values and not flag_values["verbosity"].present:
        # app.run logs at INFO, and TensorFlow logs every checkpoint write at INFO; keep the
        # console to the run's own lines unless --verbosity asks for more.
        absl_logging.set_verbosity(absl_logging.WARNING)
    values = {f.name: flag_values[f.name].value for f in dataclasses.fields(TrainConfig)}
    try:
        return TrainConfig(**values)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
