"""Distribution flags: tf.distribute strategy, devices, synchronized BatchNorm."""

from absl import flags

from resnext_tf.training.config import STRATEGIES


def define_flags(flag_values):
    """Defines distribution_strategy, num_gpus, tpu and sync_bn."""
    flags.DEFINE_enum(
        "distribution_strategy",
        "auto",
        STRATEGIES,
        "auto: multi_worker_mirrored when TF_CONFIG lists several workers, mirrored with "
        "several GPUs, one_device otherwise. off: TensorFlow's default strategy.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "num_gpus",
        -1,
        "GPUs to use (-1: all visible, 0: CPU).",
        -1,
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "tpu",
        None,
        "TPU for --distribution_strategy=tpu: 'local' on a TPU VM, or a TPU name / grpc address.",
        flag_values=flag_values,
    )
    flags.DEFINE_boolean(
        "sync_bn",
        False,
        "BatchNorm statistics over the global batch (the original keeps them per GPU).",
        flag_values=flag_values,
    )
