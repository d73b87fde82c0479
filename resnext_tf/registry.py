"""Named variants from the paper and the original's README: `create_model` and `list_models`."""

from resnext_tf.contract import DataContract, attach
from resnext_tf.recipes import RECIPES
from resnext_tf.resnext import build_resnext

# name -> (dataset, depth, cardinality C, base_width W, bottleneck_type), named "CxWd"; the
# recipe gives stem and classes. The ResNeXt-50 CxWd set keeps ResNet-50's complexity (Table 3).
MODEL_SPECS = {
    "resnext29_8x64d": ("cifar10", 29, 8, 64, "resnext_C"),
    "resnext29_16x64d": ("cifar10", 29, 16, 64, "resnext_C"),
    "resnext50_2x40d": ("imagenet", 50, 2, 40, "resnext_C"),
    "resnext50_4x24d": ("imagenet", 50, 4, 24, "resnext_C"),
    "resnext50_8x14d": ("imagenet", 50, 8, 14, "resnext_C"),
    "resnext50_32x4d": ("imagenet", 50, 32, 4, "resnext_C"),
    "resnext101_32x4d": ("imagenet", 101, 32, 4, "resnext_C"),
    "resnext101_32x8d": ("imagenet", 101, 32, 8, "resnext_C"),
    "resnext101_64x4d": ("imagenet", 101, 64, 4, "resnext_C"),
    "resnext152_32x4d": ("imagenet", 152, 32, 4, "resnext_C"),
    "resnet50": ("imagenet", 50, 1, 64, "resnet"),
    "resnet101": ("imagenet", 101, 1, 64, "resnet"),
    "resnet152": ("imagenet", 152, 1, 64, "resnet"),
}
# Arguments that define a variant; an override may repeat them but not change them.
ARCHITECTURE_ARGS = ("stem", "depth", "cardinality", "base_width")


def list_models():
    """Returns the sorted names accepted by `create_model`."""
    return sorted(MODEL_SPECS)


def model_kwargs(name):
    """Returns the `build_resnext` arguments of a registered variant.

    Raises:
      ValueError: for an unknown name.
    """
    if name not in MODEL_SPECS:
        raise ValueError(f"Unknown model; received name={name!r}, expected one of {list_models()}.")
    dataset, depth, cardinality, base_width, bottleneck_type = MODEL_SPECS[name]
    return dict(
        stem=RECIPES[dataset].stem,
        depth=depth,
        cardinality=cardinality,
        base_width=base_width,
        bottleneck_type=bottleneck_type,
        num_classes=RECIPES[dataset].num_classes,
        name=name,
    )


def create_model(name, **overrides):
    """Builds a registered variant; the model outputs logits unless told otherwise.

    Args:
      name: One of `list_models()`.
      **overrides: Other `build_resnext` arguments (num_classes, conv_impl, input_shape,
        in_channels, include_top, ...). "resnext_B" may replace "resnext_C" (the same
        function); stem, depth, cardinality and base_width must agree with the variant.
        `input_shape=(None, None, 3)` takes any size, as timm's models do.

    Returns:
      A `keras.Model`; a classifier with a square RGB input carries the variant's data contract
      (`contract.of_model`), with class names where it has the dataset's class count.

    Raises:
      ValueError: for an unknown name or an override that contradicts the variant.
    """
    kwargs = model_kwargs(name)
    for key in ARCHITECTURE_ARGS:
        if key in overrides and overrides[key] != kwargs[key]:
            raise ValueError(
                f"{name} has {key}={kwargs[key]!r}; received the contradicting override "
                f"{key}={overrides[key]!r}. Use build_resnext() for other architectures."
            )
    block = overrides.get("bottleneck_type", kwargs["bottleneck_type"])
    allowed = ("resnet",) if kwargs["bottleneck_type"] == "resnet" else ("resnext_B", "resnext_C")
    if block not in allowed:
        raise ValueError(
            f"{name} is built from {allowed} blocks; received the contradicting override "
            f"bottleneck_type={block!r}."
        )
    kwargs.update(overrides)
    model = build_resnext(**kwargs)
    dataset, size = MODEL_SPECS[name][0], model.input_shape[1]
    classes = model.output_shape[-1]
    # Another class count on a CIFAR variant is another dataset, which the variant cannot know.
    known = RECIPES[dataset].stem == "imagenet" or classes == RECIPES[dataset].num_classes
    square = size and model.input_shape[1:] == (size, size, 3)
    if kwargs.get("include_top", True) and known and square:
        attach(model, DataContract.for_dataset(dataset, classes, size))
    return model
