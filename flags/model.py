"""Model architecture flags (the original's netType options)."""

from absl import flags

from resnext_tf.training.config import BOTTLENECK_TYPES, CONV_IMPLS, SHORTCUT_TYPES


def define_flags(flag_values):
    """Defines depth, cardinality, base_width, bottleneck_type, shortcut_type, conv_impl,
    zero_init_residual, num_classes and reset_classifier."""
    flags.DEFINE_integer(
        "depth",
        None,
        "Network depth: 50, 101 or 152 on ImageNet (default 50); 9n+2 on CIFAR, e.g. 29 (default).",
        lower_bound=2,
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "cardinality", 1, "Groups C of the grouped 3x3 convolutions.", 1, flag_values=flag_values
    )
    flags.DEFINE_integer(
        "base_width",
        64,
        "Width d of one group in the first stage (ResNeXt-50 32x4d: 4; CIFAR 16x64d: 64).",
        1,
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "bottleneck_type",
        "resnext_C",
        BOTTLENECK_TYPES,
        "Block form: grouped conv (C), parallel branches (B) or plain ResNet bottleneck.",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "shortcut_type",
        "B",
        SHORTCUT_TYPES,
        "Shortcut: A zero-padded identity, B projection when the shape changes, C always "
        "projection.",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "conv_impl",
        "auto",
        CONV_IMPLS,
        "Grouped convolution implementation (auto: native grouped on TensorFlow where it runs, "
        "else split).",
        flag_values=flag_values,
    )
    flags.DEFINE_boolean(
        "zero_init_residual",
        False,
        "Start each block's last BatchNorm gamma at 0, so every block begins as the identity "
        "(Goyal et al.'s large-batch recipe; off in the original).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "num_classes",
        None,
        "Classifier outputs (default: the dataset's); the new head size with --reset_classifier.",
        1,
        flag_values=flag_values,
    )
    flags.DEFINE_boolean(
        "reset_classifier",
        False,
        "Replace the classifier loaded by --retrain with a new one of --num_classes outputs.",
        flag_values=flag_values,
    )
