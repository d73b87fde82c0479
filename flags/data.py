"""Dataset and evaluation flags."""

from absl import flags


def define_flags(datasets, flag_values):
    """Defines dataset (choices `datasets`, default the first), data_dir, image_size, ten_crop,
    max_image_pixels, max_image_aspect, max_image_bytes and test_only."""
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
    flags.DEFINE_integer(
        "max_image_pixels",
        None,
        "ImageNet images with more pixels (width x height, read from the header before "
        "decoding) are replaced like unreadable files. Default: ImageLimits' (PIL's limit).",
        1,
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "max_image_aspect",
        None,
        "ImageNet images with a longer / shorter side ratio above this are replaced like "
        "unreadable files. Default: ImageLimits'.",
        1,
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "max_image_bytes",
        None,
        "ImageNet files longer than this are replaced like unreadable files. Default: "
        "ImageLimits'.",
        1,
        flag_values=flag_values,
    )
    flags.DEFINE_boolean(
        "test_only",
        False,
        "Only evaluate (weights from --retrain, --resume or model_dir) and print "
        "' * Results top1: X  top5: Y'.",
        flag_values=flag_values,
    )
