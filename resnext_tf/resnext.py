"""The ResNeXt / ResNet network builder (pure Keras 3)."""

import numbers

import keras

from resnext_tf.contract import DataContract, attach
from resnext_tf.errors import check_choice
from resnext_tf.layers import BN_EPSILON, BN_MOMENTUM, BatchNorm, Bottleneck, GroupedConv2D
from resnext_tf.recipes import RECIPES

# ImageNet depth -> blocks in each of the four stages (ResNeXt models/resnext.lua).
IMAGENET_STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
# Stage widths ("planes"); each block outputs 4 * planes channels.
IMAGENET_PLANES = (64, 128, 256, 512)
CIFAR_PLANES = (64, 128, 256)
# Smallest input side: the ImageNet stem downsamples by 32 (as keras.applications), CIFAR by 4.
MIN_INPUT_SIZE = {"imagenet": 32, "cifar": 8}
# Default input side of each stem: its datasets' crop (resnext_tf.recipes).
DEFAULT_INPUT_SIZE = {r.stem: r.image_size for r in RECIPES.values()}
STEMS = ("imagenet", "cifar")
POOLINGS = (None, "avg", "max")


def stage_blocks(stem, depth):
    """Returns the number of blocks in each stage for a stem and depth.

    Args:
      stem: "imagenet" or "cifar".
      depth: 50, 101 or 152 for ImageNet; 9n + 2 (29 = 3 blocks a stage) for CIFAR.

    Raises:
      ValueError: for an unknown stem or a depth the stem does not support.
    """
    check_choice("stem", stem, STEMS)
    if stem == "imagenet":
        if depth not in IMAGENET_STAGE_BLOCKS:
            raise ValueError(
                f"Invalid depth for the ImageNet stem; received depth={depth!r}; expected one of "
                f"{tuple(IMAGENET_STAGE_BLOCKS)}."
            )
        return IMAGENET_STAGE_BLOCKS[depth]
    if not isinstance(depth, int) or depth < 11 or (depth - 2) % 9:
        raise ValueError(
            f"Invalid depth for the CIFAR stem; received depth={depth!r}; expected 9n + 2 with "
            "n >= 1 (11, 20, 29, ...)."
        )
    return ((depth - 2) // 9,) * 3


def check_input_shape(input_shape, stem, in_channels=None):
    """Validates an (H, W, C) input shape for a stem, keras.applications style.

    Any channel count is accepted: `resnext_tf.weights.load_weights` adapts RGB weights to it.

    Args:
      input_shape: (height, width, channels); height and width may be None (any input size).
      stem: "imagenet" or "cifar".
      in_channels: Optional channel count; must agree with `input_shape`.

    Returns:
      The shape as a tuple; for None, the stem's default size with `in_channels` (or 3).

    Raises:
      ValueError: for channels below 1 or contradicting `in_channels`, or a side below the
        stem's minimum.
    """
    if in_channels is not None and (
        isinstance(in_channels, bool)
        or not isinstance(in_channels, numbers.Integral)
        or in_channels < 1
    ):
        raise ValueError(
            f"in_channels must be an integer >= 1; received in_channels={in_channels!r}."
        )
    if input_shape is None:
        size = DEFAULT_INPUT_SIZE[stem]
        return (size, size, in_channels or 3)
    input_shape = tuple(input_shape)
    if (
        len(input_shape) != 3
        or not isinstance(input_shape[-1], numbers.Integral)
        or input_shape[-1] < 1
    ):
        raise ValueError(
            f"input_shape must be (height, width, channels) (channels_last) with channels >= 1; "
            f"received input_shape={input_shape}."
        )
    if in_channels is not None and input_shape[-1] != in_channels:
        raise ValueError(
            f"input_shape has {input_shape[-1]} channels, which contradicts in_channels="
            f"{in_channels}; received input_shape={input_shape}."
        )
    min_size = MIN_INPUT_SIZE[stem]
    for side in input_shape[:2]:
        if side is not None and side < min_size:
            raise ValueError(
                f"Input size must be at least {min_size}x{min_size} for the {stem} stem; "
                f"received input_shape={input_shape}."
            )
    return input_shape


def _stem(x, stem, conv_impl, sync_bn):
    bn = BatchNorm(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, synchronized=sync_bn, name="stem_bn")
    if stem == "imagenet":
        x = GroupedConv2D(64, 7, strides=2, padding=3, conv_impl=conv_impl, name="stem_conv")(x)
        x = keras.layers.ReLU(name="stem_relu")(bn(x))
        # After the ReLU every value is >= 0, so zero padding equals Torch's -inf padding.
        x = keras.layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
        return keras.layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    x = GroupedConv2D(64, 3, strides=1, padding=1, conv_impl=conv_impl, name="stem_conv")(x)
    return keras.layers.ReLU(name="stem_relu")(bn(x))


def _head(x, include_top, pooling, num_classes, classifier_activation):
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        # Torch nn.Linear init for the weight (U(+-1/sqrt(fan_in))); ResNeXt zeroes the bias.
        return keras.layers.Dense(
            num_classes,
            activation=classifier_activation,
            kernel_initializer=keras.initializers.VarianceScaling(
                scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
            ),
            bias_initializer="zeros",
            dtype="float32" if classifier_activation else None,
            name="head",
        )(x)
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def build_resnext(
    depth,
    cardinality=1,
    base_width=64,
    stem="imagenet",
    num_classes=1000,
    bottleneck_type="resnext_C",
    shortcut_type="B",
    conv_impl="auto",
    zero_init_residual=False,
    sync_bn=False,
    include_top=True,
    pooling=None,
    input_shape=None,
    input_tensor=None,
    classifier_activation=None,
    name=None,
    in_channels=None,
):
    """Builds a ResNeXt (or ResNet) as a functional Keras model.

    Args:
      depth: See `stage_blocks`.
      cardinality: Groups C of the 3x3 convolutions.
      base_width: Width d of one group in the first stage.
      stem: "imagenet" (7x7/2 conv, 3x3/2 max pool, 4 stages) or "cifar" (3x3 conv, 3 stages).
      num_classes: Classifier outputs when `include_top`.
      bottleneck_type, shortcut_type, conv_impl, zero_init_residual, sync_bn: See `Bottleneck`.
      include_top: Attach global average pooling and the classifier.
      pooling: Without the top: None (4D features), "avg" or "max".
      input_shape: See `check_input_shape`; 224x224 (ImageNet) or 32x32 (CIFAR) by default.
      input_tensor: Optional Keras tensor to use as the model input.
      classifier_activation: None for logits (the default here), or e.g. "softmax".
      name: Model name; derived from the architecture by default.
      in_channels: Input channels (default 3), instead of spelling them in `input_shape`.

    Returns:
      A `keras.Model`; an ImageNet-stem classifier of square RGB images carries the ImageNet
      data contract (`resnext_tf.contract.of_model`).

    Raises:
      ValueError: for invalid depth, widths, names or input shape.
    """
    blocks = stage_blocks(stem, depth)
    check_choice("pooling", pooling, POOLINGS)
    # The layers check the block arguments (Bottleneck) and conv_impl (GroupedConv2D).
    if include_top and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(
            f"num_classes must be an integer >= 1; received num_classes={num_classes!r}."
        )
    planes_per_stage = IMAGENET_PLANES if stem == "imagenet" else CIFAR_PLANES

    if input_tensor is not None and not keras.backend.is_keras_tensor(input_tensor):
        raise ValueError(
            f"input_tensor must be a Keras tensor (keras.Input); received {type(input_tensor)}."
        )
    if input_tensor is not None and input_shape is None:
        input_shape = tuple(input_tensor.shape[1:])
    input_shape = check_input_shape(input_shape, stem, in_channels)
    inputs = input_tensor if input_tensor is not None else keras.Input(input_shape, name="images")

    x = _stem(inputs, stem, conv_impl, sync_bn)
    for stage, (planes, num_blocks) in enumerate(zip(planes_per_stage, blocks, strict=True), 1):
        for block in range(1, num_blocks + 1):
            x = Bottleneck(
                planes,
                strides=2 if stage > 1 and block == 1 else 1,
                cardinality=cardinality,
                base_width=base_width,
                bottleneck_type=bottleneck_type,
                shortcut_type=shortcut_type,
                conv_impl=conv_impl,
                zero_init_residual=zero_init_residual,
                sync_bn=sync_bn,
                name=f"stage{stage}_block{block}",
            )(x)
    outputs = _head(x, include_top, pooling, num_classes, classifier_activation)
    if name is None:
        family = "resnet" if bottleneck_type == "resnet" else "resnext"
        name = f"{family}{depth}" + ("" if family == "resnet" else f"_{cardinality}x{base_width}d")
    model = keras.Model(inputs, outputs, name=name)
    size = input_shape[0]
    if stem == "imagenet" and include_top and size and tuple(input_shape) == (size, size, 3):
        # The ImageNet stem trains on the ImageNet recipe alone; a CIFAR model's dataset is
        # its caller's to say (create_model's variants do).
        attach(model, DataContract.for_dataset("imagenet", num_classes, size))
    return model
