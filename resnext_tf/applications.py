"""Keras Applications-style constructors: `ResNeXt50`, `ResNeXt101`, `ResNeXt152`, `ResNeXt29`.

keras.applications' signature and validation, plus `cardinality` and `base_width`; unlike
`create_model`, the default head ends in a softmax, as in keras.applications.
"""

import os

import numpy as np
from keras import ops

from resnext_tf.contract import imagenet_classes
from resnext_tf.errors import WeightsError
from resnext_tf.recipes import RECIPES
from resnext_tf.resnext import build_resnext
from resnext_tf.weights.pretrained import IMAGENET, PRETRAINED

# Published ImageNet weight names: "imagenet" and the source tags (weights.list_pretrained()).
PRETRAINED_NAMES = (IMAGENET, *sorted({tag for tags in PRETRAINED.values() for tag in tags}))


def _input_channels(input_shape, input_tensor, in_channels):
    """The channel count the model will have (build_resnext checks that the sources agree)."""
    if input_shape is not None and len(tuple(input_shape)):
        return tuple(input_shape)[-1]
    if input_tensor is not None and hasattr(input_tensor, "shape"):
        return input_tensor.shape[-1]
    return 3 if in_channels is None else in_channels


def _check_weights(weights, include_top, classes, stem, channels):
    if weights is None:
        return
    # A published name wins over a file of that name (resnext_tf.weights.resolve_weights' rule).
    if weights not in PRETRAINED_NAMES:
        if isinstance(weights, (str, os.PathLike)) and os.path.exists(weights):
            return
        raise WeightsError(
            "The `weights` argument should be either `None` (random initialization), "
            "'imagenet' (pre-training on ImageNet), another published weight name (see "
            "resnext_tf.weights.list_pretrained()), or the path to the weights file to be "
            f"loaded. Received: weights={weights!r}"
        )
    if stem != "imagenet":
        raise WeightsError(
            f"No pretrained weights are published for the CIFAR networks; received "
            f"weights={weights!r}. Use weights=None or the path to a weights file."
        )
    if include_top and classes != 1000:
        raise WeightsError(
            f"If using `weights={weights!r}` with `include_top=True`, `classes` should be "
            f"1000. Received classes={classes}"
        )
    if channels != 3:
        # keras.applications' rule (obtain_input_shape); a weights file is loaded as it is.
        raise WeightsError(
            f"The input must have 3 channels with weights={weights!r}; received {channels} "
            "input channels. Use weights=None and resnext_tf.weights.load_weights(model, "
            f"{weights!r}), which adapts the RGB stem to {channels} channels."
        )


def _constructor(depth, stem, default_classes, default_cardinality, default_base_width, doc):
    """Makes one keras.applications-style constructor with the variant's defaults."""

    def constructor(
        include_top=True,
        weights=None,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=default_classes,
        classifier_activation="softmax",
        name=None,
        cardinality=default_cardinality,
        base_width=default_base_width,
        **kwargs,
    ):
        channels = _input_channels(input_shape, input_tensor, kwargs.get("in_channels"))
        _check_weights(weights, include_top, classes, stem, channels)
        model = build_resnext(
            depth,
            cardinality=cardinality,
            base_width=base_width,
            stem=stem,
            num_classes=classes,
            include_top=include_top,
            pooling=pooling,
            input_shape=input_shape,
            input_tensor=input_tensor,
            classifier_activation=classifier_activation,
            name=name or f"resnext{depth}_{cardinality}x{base_width}d",
            **kwargs,
        )
        if weights is not None:
            # Imported here: weight conversion needs h5py/safetensors, the model code does not.
            from resnext_tf.weights import load_weights

            load_weights(model, weights)
        return model

    constructor.__name__ = constructor.__qualname__ = f"ResNeXt{depth}"
    constructor.__doc__ = doc + _ARGS_DOC
    return constructor


_ARGS_DOC = """

    Args:
      include_top: Whether to include the pooling and the fully-connected classifier.
      weights: None (random initialization), a published name ("imagenet", ...) or a weights
        file that `resnext_tf.weights.load_weights` reads.
      input_tensor: Optional Keras tensor to use as image input.
      input_shape: Optional (height, width, channels), at least 32x32 (8x8 for ResNeXt29),
        224x224x3 (32x32x3) by default; 3 channels with a published name, as Keras requires.
      pooling: Without the top: None, "avg" or "max".
      classes: Number of classes when `include_top`.
      classifier_activation: Activation of the top layer; None returns logits.
      name: Model name.
      cardinality: Groups C.
      base_width: Width of one group in the first stage.
      **kwargs: Further `build_resnext` arguments (bottleneck_type, shortcut_type, conv_impl,
        zero_init_residual, sync_bn, in_channels).

    Returns:
      A `keras.Model`.
    """

ResNeXt50 = _constructor(50, "imagenet", 1000, 32, 4, "ResNeXt-50 (32x4d by default), ImageNet.")
ResNeXt101 = _constructor(101, "imagenet", 1000, 32, 4, "ResNeXt-101 (32x4d by default), ImageNet.")
ResNeXt152 = _constructor(152, "imagenet", 1000, 32, 4, "ResNeXt-152 (32x4d by default), ImageNet.")
ResNeXt29 = _constructor(
    29, "cifar", 10, 16, 64, "CIFAR ResNeXt-29 (16x64d by default); no published weights."
)


def preprocess_input(x, data_format=None):
    """Scales RGB images in [0, 255] to [0, 1] and normalises with the ImageNet mean and std.

    fb.resnet.torch's normalisation, which the models were trained with (keras.applications'
    "torch" mode).

    Args:
      x: Images, NumPy or backend tensor, [..., H, W, 3] or [..., 3, H, W] (channels_first).
      data_format: None or "channels_last" (default), or "channels_first".

    Returns:
      Float32 images of the same shape.
    """
    if data_format not in (None, "channels_last", "channels_first"):
        raise ValueError(
            "data_format should be one of None, 'channels_last', 'channels_first'; received "
            f"data_format={data_format!r}."
        )
    mean = np.asarray(RECIPES["imagenet"].mean, np.float32)
    std = np.asarray(RECIPES["imagenet"].std, np.float32)
    if data_format == "channels_first":
        mean, std = mean[:, None, None], std[:, None, None]
    x = ops.cast(x, "float32") / 255.0
    return (x - mean) / std


def decode_predictions(preds, top=5):
    """Decodes ImageNet predictions into (wnid, class name, score) tuples, best first.

    Works offline: the ImageNet class index ships with the package.

    Args:
      preds: Array of shape (samples, 1000): probabilities or logits.
      top: How many classes to return per sample.

    Returns:
      A list (one entry per sample) of lists of (wnid, class_name, score) tuples.

    Raises:
      ValueError: if `preds` is not of shape (samples, 1000).
    """
    preds = np.asarray(ops.convert_to_numpy(preds))
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError(
            "`decode_predictions` expects a batch of predictions (i.e. a 2D array of shape "
            f"(samples, 1000)). Received array with shape: {preds.shape}"
        )
    wnids, labels = imagenet_classes()
    results = []
    for row in preds:
        best = np.argsort(row)[::-1][:top]
        results.append([(wnids[i], labels[i], float(row[i])) for i in best])
    return results
