"""Dataset and evaluation flags."""

from absl import flags


def define_flags(datasets, flag_values):
    """Defines dataset (choices `datasets`, default the first), data_dir, image_size, ten_crop
    and test_only."""
    flags.DEFINE_enum("dataset", datasets[0], datasets, "Dataset.", flag_values=flag_values)
    flags.DEFINE_string(
        "data_dir",
        None,
        "Dataset location: CIFAR python-version folder, ImageNet folder with train/ and val/, "
        "a TFDS data_dir, or 'synthetic' for random images. Default: the TFDS folder.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "image_size",
        None,
        "Side of the square model input (default 224 on ImageNet, 32 on CIFAR).",
        1,
        flag_values=flag_values,
    )
    flags.DEFINE_boolean(
        "ten_crop",
        False,
        "ImageNet evaluation on 10 crops (corners, centre and their mirrors), logits summed.",
        flag_values=flag_values,
    )
    flags.DEFINE_boolean(
        "test_only",
        False,
        "Only evaluate (weights from --retrain, --resume or model_dir) and print "
        "' * Results top1: X  top5: Y'.",
        flag_values=flag_values,
    )
