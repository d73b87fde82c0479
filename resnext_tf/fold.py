"""The inference graph of every export: BatchNormalization folded into the convolutions.

Per output channel, BN(conv(x, k)) = conv(x, k * s) + (beta - mean * s) with
s = gamma / sqrt(variance + eps): one biased convolution, which runtimes fuse with the ReLU
and residual add. docs/export.md, "Folded BatchNorm and bfloat16", has the details.
"""

import keras
from keras import ops

from resnext_tf.layers import Bottleneck, GroupedConv2D

DTYPES = ("float32", "bfloat16")
# How far bfloat16 logits may be from float32 ones, as a fraction of the image's largest
# |float32 logit|: rounding (2**-9 a value) over ~50 layers gives about 1% (tests/test_deploy.py).
BF16_LOGIT_TOLERANCE = 0.03
# Layers that stay float32 in a bfloat16 graph: cheap, and they keep the logits' precision.
FLOAT32_LAYERS = ("GlobalAveragePooling2D", "Dense", "GlobalMaxPooling2D", "Flatten")


@keras.saving.register_keras_serializable(package="resnext_tf")
class FoldedConv2D(GroupedConv2D):
    """`GroupedConv2D` with a per-channel bias: a convolution with its BatchNormalization folded.

    A grouped convolution's bias is an element-wise add, not BiasAdd: without oneDNN, TensorFlow
    fuses BiasAdd into a kernel that rejects groups ("Fused conv implementation does not support
    grouped convolutions").
    """

    inference_only = True

    def build(self, input_shape):
        super().build(input_shape)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, inputs):
        outputs = self.convolve(inputs, ops.cast(self.kernel, self.compute_dtype))
        bias = ops.cast(self.bias, self.compute_dtype)
        if self.groups == 1 and keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            return tf.nn.bias_add(outputs, bias)
        return outputs + bias


@keras.saving.register_keras_serializable(package="resnext_tf")
class FoldedAway(keras.layers.Layer):
    """Identity standing where a folded BatchNormalization was."""

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="resnext_tf")
class FoldedBottleneck(Bottleneck):
    """`Bottleneck` with every BN folded; `fold_batchnorm` fills in the weights."""

    def make_conv(self, suffix, filters, kernel_size=1, strides=1, groups=1):
        return FoldedConv2D(
            filters,
            kernel_size=kernel_size,
            strides=strides,
            groups=groups,
            padding=kernel_size // 2,
            conv_impl=self.conv_impl,
            name=f"{self.name}_{suffix}",
            dtype=self.dtype_policy,
        )

    def make_norm(self, suffix, zero_gamma=False):
        return FoldedAway(name=f"{self.name}_{suffix}", dtype=self.dtype_policy)

    def conv_bn_pairs(self, source):
        """(folded conv of this block, (conv, bn) of the source block) for every pair."""
        names = ["conv3", "shortcut_conv"] if self.has_projection else ["conv3"]
        if self.bottleneck_type != "resnext_B":
            names += ["conv1", "conv2"]
        pairs = [(getattr(self, n), getattr(source, n), getattr(source, bn_name(n))) for n in names]
        if self.bottleneck_type == "resnext_B":
            for part in ("conv1", "conv2"):
                convs = zip(
                    getattr(self, f"branch_{part}"),
                    getattr(source, f"branch_{part}"),
                    getattr(source, f"branch_bn{part[-1]}"),
                    strict=True,
                )
                pairs += list(convs)
        return pairs


def bn_name(conv_name):
    """The BN after a block's convolution: conv1 -> bn1, shortcut_conv -> shortcut_bn."""
    return conv_name.replace("conv", "bn")


def folded_kernel_and_bias(conv, bn):
    """(kernel * s, beta - mean * s) as float32 NumPy arrays, s = gamma / sqrt(var + eps)."""
    import numpy as np

    def value(variable):
        return np.asarray(keras.ops.convert_to_numpy(variable), np.float64)

    scale = value(bn.gamma) / np.sqrt(value(bn.moving_variance) + bn.epsilon)
    kernel = value(conv.kernel) * scale
    bias = value(bn.beta) - value(bn.moving_mean) * scale
    return kernel.astype(np.float32), bias.astype(np.float32)


def _top_level_pairs(model):
    """{conv: bn} names of top-level conv -> BN pairs with no other consumer (the stem's)."""
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        node = layer._inbound_nodes[0]
        if len(node.input_tensors) != 1:
            continue
        source = node.input_tensors[0]._keras_history.operation
        if (
            isinstance(source, GroupedConv2D)
            and not isinstance(source, FoldedConv2D)
            and len(source._inbound_nodes) == 1
            and len(source._outbound_nodes) == 1
            and layer.center
            and layer.scale
            and layer.axis in (-1, 3)
        ):
            pairs[source.name] = layer.name
    return pairs


def _policy(layer, dtype):
    if dtype == "float32" or type(layer).__name__ in FLOAT32_LAYERS:
        return "float32"
    return "bfloat16"


def fold_batchnorm(model, dtype="float32"):
    """A copy of a functional resnext_tf model with every BatchNormalization folded.

    Args:
      model: A functional model from `create_model` / `build_resnext` (any block type).
      dtype: "float32", or "bfloat16" (weights and compute; float32 images in, logits out).

    Returns:
      An inference-only `keras.Model` with the outputs of `model(x, training=False)` up to
      rounding.

    Raises:
      ValueError: `dtype` is not one of DTYPES.
    """
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype; received dtype={dtype!r}, expected one of {DTYPES}.")
    pairs = _top_level_pairs(model)
    bns = set(pairs.values())

    def clone(layer):
        config = layer.get_config()
        if "dtype" in config:
            config["dtype"] = _policy(layer, dtype)
        if layer.name in bns:
            return FoldedAway(name=layer.name, dtype=config.get("dtype"))
        if layer.name in pairs:
            return FoldedConv2D.from_config(config)
        if isinstance(layer, Bottleneck):
            return FoldedBottleneck.from_config(config)
        return type(layer).from_config(config)

    folded = keras.models.clone_model(model, clone_function=clone)
    for conv_name, bn_name_ in pairs.items():
        _assign_folded(
            folded.get_layer(conv_name), model.get_layer(conv_name), model.get_layer(bn_name_)
        )
    for layer in folded.layers:
        source = model.get_layer(layer.name)
        if isinstance(layer, FoldedBottleneck):
            for target, conv, bn in layer.conv_bn_pairs(source):
                _assign_folded(target, conv, bn)
        elif layer.name not in pairs and layer.weights:
            for target, value in zip(layer.weights, source.weights, strict=True):
                target.assign(ops.cast(value, target.dtype))
    return folded


def _assign_folded(target, conv, bn):
    kernel, bias = folded_kernel_and_bias(conv, bn)
    target.kernel.assign(ops.cast(kernel, target.kernel.dtype))
    target.bias.assign(ops.cast(bias, target.bias.dtype))
