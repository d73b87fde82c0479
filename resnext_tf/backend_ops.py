"""The one door from resnext_tf's layers to backend kernels, and the policy that picks them.

The layers are pure Keras and never ask which backend runs. Where a backend has a faster
kernel than keras.ops reaches, the functions here call it: `resnext_tf.tf_ops` on TensorFlow
(a native grouped convolution, 1x1 convolutions as matrix products, the fused batch
normalization) and `resnext_tf.jax_ops` on JAX (training-mode batch normalization). Each module is
imported on first use and only on its own backend, so the model library never imports
TensorFlow under JAX or PyTorch. Everything else, the whole PyTorch backend included, is
keras.ops. Why each choice is faster, and by how much, is in docs/performance.md.
"""

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


def tf_native_grouped_conv(dtype="float32", inference=False):
    """Whether grouped convolutions in `dtype` run as TensorFlow's own kernel in this process.

    False on JAX and PyTorch. On TensorFlow, the answer of a small probe run once per process
    and dtype (`resnext_tf.tf_ops.grouped_conv_supported`). For training (forward and
    gradients): True with oneDNN or cuDNN (GPUs), False where TensorFlow has no grouped gradient
    (a CPU without oneDNN: TensorFlow leaves it off on CPUs without AVX512-VNNI, AVX512-BF16 or
    AMX, and with TF_ENABLE_ONEDNN_OPTS=0). For `inference` (the forward pass only): True
    wherever TensorFlow runs, its own CPU kernels included.
    """
    backend, kernels = _backend()
    return backend == "tensorflow" and kernels.grouped_conv_supported(dtype, not inference)


def resolve_conv_impl(conv_impl, dtype="float32", inference=False):
    """Picks the grouped-convolution implementation for the current Keras backend.

    "auto" resolves to:
      * TensorFlow: "grouped" where TensorFlow runs the grouped convolution natively, forward and
        gradients, or forward only for an `inference` layer (`tf_native_grouped_conv`): one
        convolution a layer instead of `cardinality` small ones plus the slicing and
        concatenation. Else "split": Keras' own grouped
        convolution (the fallback of "grouped" there) runs inside an XLA-compiled function,
        whose CPU gradient is far slower than split convolutions and which a SavedModel then
        needs at serving time.
      * JAX on a GPU: "block_diagonal": cuDNN's grouped kernels do little arithmetic per byte
        on groups of 4-32 channels; merged groups (resnext_tf.layers.GROUP_MERGE at a time)
        are wider and train faster, although they multiply as many times more zeros.
      * JAX elsewhere and PyTorch: "grouped". Both lower groups natively (XLA
        feature_group_count, cuDNN grouped kernels), one kernel launch instead of
        `cardinality` of them.

    Args:
      conv_impl: "auto", "grouped", "split" or "block_diagonal".
      dtype: Compute dtype of the convolution (TensorFlow's support is probed per dtype).
      inference: The layer never computes gradients (e.g. `resnext_tf.fold.FoldedConv2D`).

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
    """Bias-free NHWC convolution; the groups are in_channels / kernel.shape[2].

    On TensorFlow a grouped convolution runs as TensorFlow's own grouped kernel where there is
    one (`tf_native_grouped_conv`), and a 1x1 convolution as one matrix product where that is
    faster (`resnext_tf.tf_ops.pointwise_as_matmul`); everything else is keras.ops.conv.

    Args:
      inputs: NHWC tensor.
      kernel: (kh, kw, in_channels // groups, filters), in the dtype of `inputs`.
      strides: Square stride.
      padding: "same" or "valid".
      inference: No gradient is ever taken: TensorFlow's native grouped kernel serves wherever
        it runs forward, whether or not it has the gradients.
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
    """Batch normalization of NHWC `inputs` over the last axis with the backend's fused kernel.

    TensorFlow: FusedBatchNormV3, in training and inference. JAX: training only
    (`resnext_tf.jax_ops.batch_norm_train`); inference stays Keras' element-wise normalization,
    which XLA fuses.

    Args:
      inputs: 4D NHWC tensor.
      gamma, beta, moving_mean, moving_variance: the layer's float32 variables.
      epsilon: Added to the variance.
      training: Normalize with the batch statistics (True) or the moving ones.

    Returns:
      (outputs, mean, variance), the statistics being the batch's in training (the biased
      variance); or None where the backend has no fused kernel for this call or dtype.
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
