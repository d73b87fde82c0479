"""The one door from resnext_tf's layers to backend kernels, and the policy that picks them.

`tf_ops` and `jax_ops` are imported on first use, only on their own backend, so the model never
imports TensorFlow under JAX or PyTorch. The figures behind each choice: docs/performance.md.
"""

import contextlib
import functools

import keras
from keras import ops

from resnext_tf.errors import check_choice

CONV_IMPLS = ("auto", "grouped", "split", "block_diagonal")
# Input dtypes of the fused batch normalizations (both compute in float32).
FUSED_BN_DTYPES = ("float32", "float16", "bfloat16")


@functools.cache
def _kernels(backend):
    """The kernel module of `backend`, imported once; None where keras.ops is all there is."""
    if backend == "tensorflow":
        from resnext_tf import tf_ops

        return tf_ops
    if backend == "jax":
        from resnext_tf import jax_ops

        return jax_ops
    return None


def _backend():
    backend = keras.backend.backend()
    return backend, _kernels(backend)


def pointwise_as_convolutions():
    """A context in which the model traces its 1x1 convolutions as convolutions, not matrix
    products (`tf_ops.pointwise_as_convolutions`); nothing changes off TensorFlow."""
    backend, kernels = _backend()
    if backend == "tensorflow":
        return kernels.pointwise_as_convolutions()
    return contextlib.nullcontext()


def tf_native_grouped_conv(dtype="float32", inference=False):
    """Whether grouped convolutions in `dtype` run as TensorFlow's own kernel here.

    Probed by `tf_ops.grouped_conv_supported`: training needs oneDNN or cuDNN, `inference` (the
    forward pass only) runs on any TensorFlow.
    """
    backend, kernels = _backend()
    return backend == "tensorflow" and kernels.grouped_conv_supported(dtype, not inference)


def resolve_conv_impl(conv_impl, dtype="float32", inference=False):
    """Picks the grouped-convolution implementation for the current Keras backend.

    "auto" is "grouped" on TensorFlow where `tf_native_grouped_conv`, else "split" (Keras' grouped
    convolution there is XLA: slow to train on CPU, and XLA at serving time); "block_diagonal" with
    JAX on a GPU (cuDNN is slow on 4- to 32-channel groups); "grouped" elsewhere (native groups).

    Args:
      conv_impl: One of CONV_IMPLS.
      dtype: Compute dtype of the convolution.
      inference: The layer never takes gradients (e.g. `resnext_tf.fold.FoldedConv2D`).

    Returns:
      "grouped", "split" or "block_diagonal".
    """
    check_choice("conv_impl", conv_impl, CONV_IMPLS)
    if conv_impl != "auto":
        return conv_impl
    backend, kernels = _backend()
    if backend == "jax":
        return "block_diagonal" if kernels.on_gpu() else "grouped"
    if backend != "tensorflow" or tf_native_grouped_conv(dtype, inference):
        return "grouped"
    return "split"


def explain_conv_impl(conv_impl, dtype="float32"):
    """(implementation, why) of `resolve_conv_impl` for a training layer, for the run's log."""
    impl = resolve_conv_impl(conv_impl, dtype)
    backend = keras.backend.backend()
    if conv_impl != "auto":
        return impl, "as requested"
    if impl == "block_diagonal":
        return impl, "JAX on a GPU: merged groups run faster on cuDNN"
    if backend != "tensorflow":
        return impl, f"{backend}'s native grouped convolution"
    if impl == "grouped":
        return impl, "TensorFlow runs grouped convolutions natively, forward and gradients"
    return impl, (
        "TensorFlow has no native grouped gradient here (oneDNN is off; "
        "TF_ENABLE_ONEDNN_OPTS=1 before TensorFlow is imported turns it on)"
    )


def conv2d(inputs, kernel, strides, padding, inference=False):
    """Bias-free NHWC convolution with in_channels / kernel.shape[2] groups.

    On TensorFlow, grouped convolutions run natively where `tf_native_grouped_conv`, and 1x1
    ones as a matrix product where `tf_ops.pointwise_as_matmul`; the rest is keras.ops.conv.

    Args:
      inputs: NHWC tensor.
      kernel: (kh, kw, in_channels // groups, filters), in the dtype of `inputs`.
      strides: Square stride.
      padding: "same" or "valid".
      inference: No gradient is ever taken (see `tf_native_grouped_conv`).
    """
    backend, kernels = _backend()
    if backend == "tensorflow":
        grouped = inputs.shape[-1] != kernel.shape[2]
        dtype = keras.backend.standardize_dtype(kernel.dtype)
        if grouped and tf_native_grouped_conv(dtype, inference):
            return kernels.grouped_conv2d(inputs, kernel, strides, padding.upper())
        pointwise = not grouped and tuple(kernel.shape[:2]) == (1, 1)
        shape, filters = tuple(inputs.shape), kernel.shape[-1]
        if pointwise and kernels.pointwise_as_matmul(shape, strides, filters):
            return kernels.pointwise_conv2d(inputs, kernel, strides)
    return ops.conv(inputs, kernel, strides=strides, padding=padding)


def batch_norm(inputs, gamma, beta, moving_mean, moving_variance, epsilon, training):
    """Batch normalization of NHWC `inputs` over the last axis on the backend's fused kernel.

    TensorFlow: FusedBatchNormV3; JAX: `jax_ops.batch_norm_train`, in training only (XLA fuses
    Keras' inference normalization already).

    Args:
      inputs: 4D NHWC tensor.
      gamma, beta, moving_mean, moving_variance: The layer's float32 variables.
      epsilon: Added to the variance.
      training: Normalize with the batch statistics (True) or the moving ones.

    Returns:
      (outputs, mean, variance), in training the batch's (biased variance); None where the
      backend has no fused kernel for this call.
    """
    backend, kernels = _backend()
    if keras.backend.standardize_dtype(inputs.dtype) not in FUSED_BN_DTYPES:
        return None
    if backend == "tensorflow":
        return kernels.fused_batch_norm(
            inputs, gamma, beta, moving_mean, moving_variance, epsilon, training
        )
    if backend == "jax" and training:
        # The moving mean is the shift of the one-pass variance (see jax_ops._statistics).
        return kernels.batch_norm_train(inputs, gamma.value, beta.value, moving_mean.value, epsilon)
    return None
