"""Keras 3 layers of ResNeXt: grouped convolution, batch normalization, the bottleneck block.

Pure Keras; faster backend kernels are reached only through `resnext_tf.backend_ops`.
Convolutions are bias-free and pad symmetrically as Torch does, so converted weights match.
"""

import math

import keras
from keras import ops

from resnext_tf import backend_ops
from resnext_tf.backend_ops import CONV_IMPLS, resolve_conv_impl
from resnext_tf.errors import check_choice

# Torch's BatchNorm defaults: eps 1e-5, running-average momentum 0.1 (Keras momentum 0.9).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9

BOTTLENECK_TYPES = ("resnext_C", "resnext_B", "resnet")
SHORTCUT_TYPES = ("A", "B", "C")
# "block_diagonal" merges this many groups (fewer where they must divide the cardinality) into
# one block-diagonal group: wider groups suit cuDNN, more zeros cost (docs/performance.md).
GROUP_MERGE = 4


def conv_initializer():
    """He normal with fan_out, as fb.resnet.torch: std = sqrt(2 / (kh * kw * out_channels))."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


def block_diagonal_kernel(kernel, groups, merge):
    """Rewrites a grouped kernel as groups / merge groups with block-diagonal kernels.

    Args:
      kernel: (kh, kw, in_channels // groups, filters), output channels group by group.
      groups: Groups of `kernel`.
      merge: Groups merged into one; divides `groups`.

    Returns:
      (kh, kw, merge * in_channels // groups, filters), zero off the diagonal blocks: the same
      convolution, and the zeros pass no gradient to `kernel`.
    """
    kh, kw, group_in, filters = kernel.shape
    group_out = filters // groups
    blocks = ops.reshape(kernel, (kh, kw, 1, group_in, groups // merge, merge, group_out))
    eye = ops.reshape(ops.eye(merge, dtype=kernel.dtype), (1, 1, merge, 1, 1, merge, 1))
    return ops.reshape(blocks * eye, (kh, kw, merge * group_in, filters))


def symmetric_pad(x, pad):
    """Zero-pads height and width by `pad` on each side (Torch's padding)."""
    if pad == 0:
        return x
    return ops.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])


@keras.saving.register_keras_serializable(package="resnext_tf")
class GroupedConv2D(keras.layers.Layer):
    """Bias-free grouped convolution with Torch's symmetric padding.

    Whatever `conv_impl`, the kernel has Keras Conv2D(groups) layout, outputs group by group.

    Args:
      filters: Output channels; divisible by `groups`.
      kernel_size: Square kernel size.
      strides: Square stride.
      groups: Number of groups (the cardinality).
      padding: Zero padding on each side of height and width.
      conv_impl: "grouped" (one convolution), "split" (one a group, no XLA), "block_diagonal"
        (`block_diagonal_kernel`) or "auto" (`backend_ops.resolve_conv_impl`).
      kernel_initializer: He fan_out normal by default.
      **kwargs: Base layer arguments (name, dtype, ...).
    """

    # True on layers that never take gradients (`resnext_tf.fold`, the serving copy): TensorFlow
    # then runs grouped convolutions natively wherever it has the forward kernel.
    inference_only = False

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        groups=1,
        padding=1,
        conv_impl="auto",
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_choice("conv_impl", conv_impl, CONV_IMPLS)
        if groups < 1 or filters % groups:
            raise ValueError(
                f"groups must divide filters; received groups={groups}, filters={filters}."
            )
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.groups = groups
        self.padding = padding
        self.conv_impl = conv_impl
        self.kernel_initializer = keras.initializers.get(kernel_initializer or conv_initializer())

    def build(self, input_shape):
        in_channels = input_shape[-1]
        if in_channels % self.groups:
            raise ValueError(
                f"groups must divide the input channels; received groups={self.groups}, "
                f"input channels={in_channels}."
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.kernel_size, in_channels // self.groups, self.filters),
            initializer=self.kernel_initializer,
        )

    def call(self, inputs):
        return self.convolve(inputs, ops.cast(self.kernel, self.compute_dtype))

    def convolve(self, inputs, kernel):
        """This layer's convolution of NHWC `inputs` with another `kernel` (e.g. BN folded in)."""
        # Here 'same' is the identical computation without a pad op.
        same = self.strides == 1 and 2 * self.padding == self.kernel_size - 1
        if not same:
            inputs = symmetric_pad(inputs, self.padding)
        padding = "same" if same else "valid"
        impl = None
        if self.groups > 1:
            impl = resolve_conv_impl(self.conv_impl, self.compute_dtype, self.inference_only)
        if impl == "split":
            pairs = zip(
                ops.split(inputs, self.groups, axis=-1),
                ops.split(kernel, self.groups, axis=-1),
                strict=True,
            )
            outputs = [
                backend_ops.conv2d(x, k, self.strides, padding, self.inference_only)
                for x, k in pairs
            ]
            return ops.concatenate(outputs, axis=-1)
        if impl == "block_diagonal":
            merge = math.gcd(self.groups, GROUP_MERGE)
            kernel = block_diagonal_kernel(kernel, self.groups, merge)
        return backend_ops.conv2d(inputs, kernel, self.strides, padding, self.inference_only)

    def compute_output_shape(self, input_shape):
        def out(size):
            if size is None:
                return None
            return (size + 2 * self.padding - self.kernel_size) // self.strides + 1

        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            groups=self.groups,
            padding=self.padding,
            conv_impl=self.conv_impl,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config


@keras.saving.register_keras_serializable(package="resnext_tf")
class BatchNorm(keras.layers.BatchNormalization):
    """keras.layers.BatchNormalization on the backends' fused kernels where they help.

    The same arguments, variables, config and results; a plain NHWC normalization (no mask,
    synchronization or renormalization) runs on `backend_ops.batch_norm` where the backend can.
    """

    def _fused(self, inputs, mask, training):
        """(outputs, mean, variance) of the backend's fused kernel, or None for Keras' path."""
        plain = (
            mask is None
            and not (self.synchronized or self.renorm)
            and self.center
            and self.scale
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
        )
        if not plain:
            return None
        return backend_ops.batch_norm(
            inputs,
            self.gamma,
            self.beta,
            self.moving_mean,
            self.moving_variance,
            self.epsilon,
            training,
        )

    def call(self, inputs, training=None, mask=None):
        training = bool(training and self.trainable)
        fused = self._fused(inputs, mask, training)
        if fused is None:
            return super().call(inputs, training=training, mask=mask)
        outputs, mean, variance = fused
        if training:
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
        return ops.cast(outputs, self.compute_dtype)


def bottleneck_width(planes, cardinality, base_width):
    """The paper's D * C: floor(planes * base_width / 64) * cardinality."""
    return (planes * base_width // 64) * cardinality


@keras.saving.register_keras_serializable(package="resnext_tf")
class Bottleneck(keras.layers.Layer):
    """One residual bottleneck block: ResNeXt (forms B and C) or the plain ResNet bottleneck.

    resnext_C: 1x1 (in -> D*C), BN, ReLU, grouped 3x3 (stride s), BN, ReLU, 1x1 (-> 4*planes), BN.
    resnext_B: C branches of 1x1 and 3x3 (D channels) concatenated, then 1x1, BN: form C with the
    branch weights stacked. resnet: C with cardinality 1, width 64. Then shortcut, add, ReLU.

    Args:
      planes: Stage width; the block outputs 4 * planes channels.
      strides: Stride of the 3x3 convolution and of the projection shortcut.
      cardinality: Number of groups C.
      base_width: Width of one group in the first stage (the paper's d).
      bottleneck_type: One of BOTTLENECK_TYPES.
      shortcut_type: "A" (identity, or subsample + zero channels), "B" (projection where the
        shape changes) or "C" (always a projection).
      conv_impl: Grouped 3x3 implementation, see `GroupedConv2D`.
      zero_init_residual: Start the last BN's gamma at zero so the block starts as identity.
      sync_bn: Synchronize BN statistics across replicas (TensorFlow backend only).
      **kwargs: Base layer arguments (name, dtype, ...).

    `width` (D * C) and `out_channels` are set at construction, the sublayers (conv1 ... bn3, or
    resnext_B's branch_conv1 ... branch_bn2 lists; shortcut_conv / shortcut_bn if
    `has_projection`) when built. Their names are part of the .weights.h5 format; subclasses
    change them by overriding `make_conv` and `make_norm` (e.g. BN folded away).
    """

    def __init__(
        self,
        planes,
        strides=1,
        cardinality=1,
        base_width=64,
        bottleneck_type="resnext_C",
        shortcut_type="B",
        conv_impl="auto",
        zero_init_residual=False,
        sync_bn=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_choice("bottleneck_type", bottleneck_type, BOTTLENECK_TYPES)
        check_choice("shortcut_type", shortcut_type, SHORTCUT_TYPES)
        for name, value in (("cardinality", cardinality), ("base_width", base_width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; received {name}={value!r}.")
        if bottleneck_type == "resnet" and (cardinality, base_width) != (1, 64):
            raise ValueError(
                "bottleneck_type='resnet' is the plain bottleneck (cardinality 1, base_width 64); "
                f"received cardinality={cardinality}, base_width={base_width}."
            )
        if planes * base_width // 64 < 1:
            raise ValueError(
                f"planes * base_width / 64 must be >= 1 (one channel a group); received "
                f"planes={planes}, base_width={base_width}."
            )
        self.planes = planes
        self.strides = strides
        self.cardinality = cardinality
        self.base_width = base_width
        self.bottleneck_type = bottleneck_type
        self.shortcut_type = shortcut_type
        self.conv_impl = conv_impl
        self.zero_init_residual = zero_init_residual
        self.sync_bn = sync_bn
        self.width = bottleneck_width(planes, cardinality, base_width)
        self.out_channels = 4 * planes
        # The sublayers (see the class docstring), made in build.
        self.conv1 = self.bn1 = self.conv2 = self.bn2 = self.conv3 = self.bn3 = None
        self.shortcut_conv = self.shortcut_bn = self.has_projection = None
        self.branch_conv1, self.branch_bn1, self.branch_conv2, self.branch_bn2 = [], [], [], []

    def make_conv(self, suffix, filters, kernel_size=1, strides=1, groups=1):
        """A convolution of the block, named `<block>_<suffix>`, padded as Torch pads."""
        return GroupedConv2D(
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
        """A BatchNorm of the block, named `<block>_<suffix>`."""
        return BatchNorm(
            epsilon=BN_EPSILON,
            momentum=BN_MOMENTUM,
            gamma_initializer="zeros" if zero_gamma else "ones",
            synchronized=self.sync_bn,
            name=f"{self.name}_{suffix}",
            dtype=self.dtype_policy,
        )

    def _branches(self):
        branches = (self.branch_conv1, self.branch_bn1, self.branch_conv2, self.branch_bn2)
        return zip(*branches, strict=True)

    def _needs_projection(self, in_channels):
        return self.shortcut_type == "C" or (
            self.shortcut_type == "B" and in_channels != self.out_channels
        )

    def build(self, input_shape):
        in_channels = input_shape[-1]
        if self.shortcut_type == "A" and in_channels > self.out_channels:
            raise ValueError(
                f"shortcut_type='A' can only add channels; received in_channels={in_channels}, "
                f"out_channels={self.out_channels}."
            )
        d = self.width // self.cardinality
        if self.bottleneck_type == "resnext_B":
            branches = range(self.cardinality)
            self.branch_conv1 = [self.make_conv(f"branch{i}_conv1", d) for i in branches]
            self.branch_bn1 = [self.make_norm(f"branch{i}_bn1") for i in branches]
            self.branch_conv2 = [
                self.make_conv(f"branch{i}_conv2", d, 3, self.strides) for i in branches
            ]
            self.branch_bn2 = [self.make_norm(f"branch{i}_bn2") for i in branches]
            in_branch = (*input_shape[:-1], d)
            for conv1, bn1, conv2, bn2 in self._branches():
                conv1.build(input_shape)
                bn1.build(in_branch)
                conv2.build(in_branch)
                bn2.build(conv2.compute_output_shape(in_branch))
        else:
            self.conv1 = self.make_conv("conv1", self.width)
            self.bn1 = self.make_norm("bn1")
            self.conv2 = self.make_conv("conv2", self.width, 3, self.strides, self.cardinality)
            self.bn2 = self.make_norm("bn2")
            mid = (*input_shape[:-1], self.width)
            self.conv1.build(input_shape)
            self.bn1.build(mid)
            self.conv2.build(mid)
            self.bn2.build(self.conv2.compute_output_shape(mid))
        out_shape = self.compute_output_shape(input_shape)
        self.conv3 = self.make_conv("conv3", self.out_channels)
        self.bn3 = self.make_norm("bn3", zero_gamma=self.zero_init_residual)
        self.conv3.build((*out_shape[:-1], self.width))
        self.bn3.build(out_shape)
        self.has_projection = self._needs_projection(in_channels)
        if self.has_projection:
            self.shortcut_conv = self.make_conv("shortcut_conv", self.out_channels, 1, self.strides)
            self.shortcut_bn = self.make_norm("shortcut_bn")
            self.shortcut_conv.build(input_shape)
            self.shortcut_bn.build(out_shape)

    def _residual(self, x, training):
        if self.bottleneck_type == "resnext_B":
            branches = []
            for conv1, bn1, conv2, bn2 in self._branches():
                y = ops.relu(bn1(conv1(x), training=training))
                branches.append(ops.relu(bn2(conv2(y), training=training)))
            y = ops.concatenate(branches, axis=-1)
        else:
            y = ops.relu(self.bn1(self.conv1(x), training=training))
            y = ops.relu(self.bn2(self.conv2(y), training=training))
        return self.bn3(self.conv3(y), training=training)

    def _shortcut(self, x, training):
        if self.has_projection:
            return self.shortcut_bn(self.shortcut_conv(x), training=training)
        if self.strides > 1:
            x = x[:, :: self.strides, :: self.strides, :]
        extra = self.out_channels - x.shape[-1]
        if extra:
            # Type A: strided identity with the new channels set to zero.
            x = ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, extra]])
        return x

    def call(self, inputs, training=None):
        return ops.relu(self._residual(inputs, training) + self._shortcut(inputs, training))

    def compute_output_shape(self, input_shape):
        def out(size):
            return None if size is None else (size - 1) // self.strides + 1

        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), self.out_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            planes=self.planes,
            strides=self.strides,
            cardinality=self.cardinality,
            base_width=self.base_width,
            bottleneck_type=self.bottleneck_type,
            shortcut_type=self.shortcut_type,
            conv_impl=self.conv_impl,
            zero_init_residual=self.zero_init_residual,
            sync_bn=self.sync_bn,
        )
        return config
