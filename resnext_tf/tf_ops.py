"""TensorFlow kernels behind resnext_tf's layers, imported only through `resnext_tf.backend_ops`.

Keras 3 reaches neither: `keras.ops.conv` wraps every grouped convolution in an XLA-compiled
function, and Keras' BatchNormalization is separate element-wise ops. Here they are one grouped
`tf.nn.conv2d` (oneDNN and cuDNN run it, gradients included, without XLA) and FusedBatchNormV3.
"""

import contextlib
import contextvars
import functools

import numpy as np
import tensorflow as tf

# Probe of the native grouped convolution: 2 groups of 2 channels, stride 1 "SAME" and stride 2
# "VALID" (the two forms GroupedConv2D uses). Values in {-1, 0, 1} keep every product and sum a
# small integer, exact in float16 and bfloat16 too; a wrong result is off by at least 1.
PROBE_INPUT_SHAPE = (1, 5, 5, 4)
PROBE_KERNEL_SHAPE = (3, 3, 2, 4)
PROBE_FORMS = ((1, "SAME"), (2, "VALID"))
PROBE_TOLERANCE = 0.25
# A 1x1 convolution runs as one matrix product on CPUs where its kernel has at least this many
# elements per element of input and output: oneDNN's convolution reorders the kernel at every
# call, which costs most where the kernel outweighs the activations.
POINTWISE_MATMUL_MIN_RATIO = 0.25
# False inside `pointwise_as_convolutions()`.
_POINTWISE_MATMUL = contextvars.ContextVar("pointwise_matmul", default=True)


def grouped_conv2d(inputs, kernel, strides, padding):
    """Returns one convolution with in_channels / kernel.shape[2] groups.

    Arguments as `backend_ops.conv2d`, but `padding` is "SAME" or "VALID": explicit paddings have
    no grouped gradient.
    """
    return tf.nn.conv2d(inputs, kernel, strides, padding)


@functools.cache
def _gpu_visible():
    return bool(tf.config.list_physical_devices("GPU"))


@contextlib.contextmanager
def pointwise_as_convolutions():
    """Traces every 1x1 convolution as a convolution: for graphs another runtime compiles
    (ONNX Runtime, OpenVINO, LiteRT), which packs the kernel once; the matrix product only
    saves TensorFlow's per-call kernel reorder and costs those runtimes reshapes (OpenVINO's
    INT8 ran 1.4x faster on convolutions)."""
    token = _POINTWISE_MATMUL.set(False)
    try:
        yield
    finally:
        _POINTWISE_MATMUL.reset(token)


def pointwise_as_matmul(input_shape, strides, filters):
    """Whether a 1x1 convolution of this shape runs as `pointwise_conv2d`.

    Only in CPU-only processes (it was measured on CPUs only) and with known height and width,
    outside `pointwise_as_convolutions`; an unknown batch counts as 1 (serving).

    Args:
      input_shape: NHWC shape, entries None where unknown.
      strides: Square stride of the convolution.
      filters: Output channels.
    """
    batch, height, width, channels = input_shape
    if not _POINTWISE_MATMUL.get():
        return False
    if height is None or width is None or channels is None or _gpu_visible():
        return False
    positions = (batch or 1) * -(-height // strides) * -(-width // strides)
    kernel = channels * filters
    return kernel >= POINTWISE_MATMUL_MIN_RATIO * positions * (channels + filters)


def pointwise_conv2d(inputs, kernel, strides):
    """Returns a 1x1 convolution without padding as one matrix product.

    Args:
      inputs: NHWC tensor.
      kernel: (1, 1, in_channels, filters).
      strides: Square stride, applied by slicing first.
    """
    if strides > 1:
        inputs = inputs[:, ::strides, ::strides, :]
    shape = tf.shape(inputs)
    outputs = tf.matmul(tf.reshape(inputs, [-1, shape[-1]]), kernel[0, 0])
    return tf.reshape(outputs, tf.concat([shape[:-1], [kernel.shape[-1]]], 0))


def _conv_and_gradients(inputs, kernel, strides, padding, gradients=True):
    """Conv2D and (with `gradients`) its two gradient ops for an upstream gradient of ones.

    Called directly: the probe runs under tf.init_scope, which pauses tapes.
    """
    outputs = tf.nn.conv2d(inputs, kernel, strides, padding)
    if not gradients:
        return [outputs]
    upstream = tf.ones_like(outputs)
    attrs = dict(out_backprop=upstream, strides=[1, strides, strides, 1], padding=padding)
    d_inputs = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(inputs), filter=kernel, **attrs)
    d_kernel = tf.raw_ops.Conv2DBackpropFilter(input=inputs, filter_sizes=tf.shape(kernel), **attrs)
    return outputs, d_inputs, d_kernel


def _split_conv_and_gradients(inputs, kernel, strides, padding, gradients=True):
    """The same, one group at a time (plain convolutions), concatenated group by group."""
    groups = inputs.shape[-1] // kernel.shape[2]
    pairs = zip(tf.split(inputs, groups, -1), tf.split(kernel, groups, -1), strict=True)
    parts = [_conv_and_gradients(x, k, strides, padding, gradients) for x, k in pairs]
    return [tf.concat(part, -1) for part in zip(*parts, strict=True)]


@functools.cache
def _grouped_conv_supported(dtype, gradients):
    rng = np.random.default_rng(0)
    inputs = tf.constant(rng.integers(-1, 2, PROBE_INPUT_SHAPE), dtype)
    kernel = tf.constant(rng.integers(-1, 2, PROBE_KERNEL_SHAPE), dtype)
    try:
        for strides, padding in PROBE_FORMS:
            native = _conv_and_gradients(inputs, kernel, strides, padding, gradients)
            split = _split_conv_and_gradients(inputs, kernel, strides, padding, gradients)
            for a, b in zip(native, split, strict=True):
                a, b = (tf.cast(t, tf.float32).numpy() for t in (a, b))
                if not np.allclose(a, b, atol=PROBE_TOLERANCE):
                    return False
    except tf.errors.OpError:
        # E.g. "Gradients for grouped convolutions are not supported on CPU" without oneDNN.
        return False
    return True


def grouped_conv_supported(dtype="float32", gradients=True):
    """Whether this process runs `grouped_conv2d` natively in `dtype`.

    A tiny grouped convolution (and its gradient ops) runs eagerly, even during a trace, against
    one convolution a group; the answer is cached. TensorFlow's own CPU kernels lack the grouped
    gradient; oneDNN (see `resnext_tf.hardware`) and cuDNN have both directions.

    Args:
      dtype: The compute dtype, e.g. "float32" or "bfloat16".
      gradients: Ask whether it trains; False asks whether it infers (forward only).
    """
    with tf.init_scope():
        return _grouped_conv_supported(tf.as_dtype(dtype), bool(gradients))


def fused_batch_norm(inputs, gamma, beta, mean, variance, epsilon, training):
    """`backend_ops.batch_norm` on TensorFlow, with FusedBatchNormV3.

    `inputs` may be float32, float16 or bfloat16 (computed in float32); `mean` and `variance` are
    the moving statistics. In training the returned ones are the batch mean and the biased
    variance, as Keras averages it.
    """
    # The raw op, not tf.compat.v1.nn.fused_batch_norm, which raises epsilon to 1.001e-5. In
    # training the kernel takes empty statistics and returns the batch's.
    empty = tf.zeros((0,), tf.float32)
    outputs, batch_mean, batch_variance = tf.raw_ops.FusedBatchNormV3(
        x=inputs,
        scale=gamma,
        offset=beta,
        mean=empty if training else mean,
        variance=empty if training else variance,
        epsilon=epsilon,
        data_format="NHWC",
        is_training=training,
    )[:3]
    if not training:
        return outputs, mean, variance
    # The kernel returns the Bessel-corrected variance, n / (n - 1) times the biased one.
    count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)
    return outputs, batch_mean, batch_variance * ((count - 1.0) / count)
