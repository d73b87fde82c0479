"""Multiply-add counts, as the paper reports model complexity ("FLOPs" = multiply-adds)."""

import keras

from resnext_tf.layers import GroupedConv2D
from resnext_tf.registry import create_model


def _conv_macs(conv, input_shape):
    out_shape = conv.compute_output_shape(input_shape)
    per_output = conv.kernel_size**2 * input_shape[-1] // conv.groups
    return out_shape[1] * out_shape[2] * out_shape[3] * per_output


def _layer_macs(layer, input_shape):
    """Multiply-adds of one layer (recursing into blocks); pooling, BN and adds are not counted."""
    if isinstance(layer, GroupedConv2D):
        return _conv_macs(layer, input_shape)
    if isinstance(layer, keras.layers.Dense):
        return input_shape[-1] * layer.units
    total = 0
    for sub in layer._flatten_layers(include_self=False, recursive=False):
        if isinstance(sub, GroupedConv2D):
            total += _conv_macs(sub, _conv_input_shape(layer, sub, input_shape))
    return total


def _conv_input_shape(block, conv, block_input):
    """Input shape of a convolution inside a Bottleneck block."""
    if conv in (block.conv1, block.shortcut_conv, *block.branch_conv1):
        return block_input
    if conv is block.conv3:
        out = block.compute_output_shape(block_input)
        return (*out[:-1], block.width)
    # The 3x3: the block input's spatial size with `width` (or one branch's) channels.
    return (*block_input[:-1], conv.kernel.shape[2] * conv.groups)


def count_flops(model, input_shape=None):
    """Counts the multiply-adds of one forward pass of one image.

    Args:
      model: A model from `create_model`/`build_resnext`, or a registered name.
      input_shape: (height, width, channels) when `model` is a name; the variant's by default.

    Returns:
      Multiply-adds of the convolutions and the classifier, as an int.
    """
    if isinstance(model, str):
        model = create_model(model, input_shape=input_shape)
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        shape = tuple(layer.input.shape)
        total += _layer_macs(layer, (1, *shape[1:]))
    return total
