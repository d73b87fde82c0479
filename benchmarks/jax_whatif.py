"""What-if experiments on the JAX backend: the benchmark with layer calls patched in-process.

    KERAS_BACKEND=jax python benchmarks/jax_whatif.py --bn=fused --merge_groups=4 \
        --mode=train --batch_size=256 --dtype=bfloat16 --conv_impl=grouped

Not the library: this script replaces two Keras-level calls for one process.
  --bn=fused        keras.layers.BatchNormalization in training mode runs
                    `resnext_tf.jax_ops.batch_norm_train` (one-pass statistics, hand-written
                    gradient) instead of Keras' moments + batch_normalization.
  --merge_groups=K  every grouped convolution of G groups runs as G/K groups whose kernels are
                    block-diagonal (K original groups each, zeros between): K times the
                    multiply-adds, but wider groups for the convolution kernels.
Before timing it checks on a small model that outputs, gradients and moving statistics match
the stock layers, and records the largest difference; the remaining arguments are
`resnext_tf.benchmark`'s.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from resnext_tf import benchmark, build_resnext, jax_ops, layers  # noqa: E402

STOCK_BN_CALL = keras.layers.BatchNormalization.call
STOCK_CONV_CALL = layers.GroupedConv2D.call
CHECK_MODEL = dict(depth=11, stem="cifar", cardinality=8, base_width=4, input_shape=(8, 8, 3))


def fused_bn_call(self, inputs, training=None, mask=None):
    """BatchNormalization.call with training mode on jax_ops.batch_norm_train."""
    if not (training and self.trainable) or mask is not None or self.synchronized:
        return STOCK_BN_CALL(self, inputs, training=training, mask=mask)
    y, mean, variance = jax_ops.batch_norm_train(
        keras.ops.cast(inputs, self.compute_dtype),
        self.gamma.value,
        self.beta.value,
        self.moving_mean.value,
        self.epsilon,
    )
    self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1 - self.momentum))
    self.moving_variance.assign(
        self.moving_variance * self.momentum + variance * (1 - self.momentum)
    )
    return y


def block_diagonal(kernel, groups, merge):
    """(kh, kw, cin/G, cout) grouped kernel -> (kh, kw, merge*cin/G, cout) of G/merge groups."""
    kh, kw, cin_g, cout = kernel.shape
    cout_g = cout // groups
    blocks = kernel.reshape(kh, kw, 1, cin_g, groups // merge, merge, cout_g)
    eye = jnp.eye(merge, dtype=kernel.dtype).reshape(1, 1, merge, 1, 1, merge, 1)
    return (blocks * eye).reshape(kh, kw, merge * cin_g, cout)


def merged_conv_call(merge):
    def call(self, inputs):
        if self.groups == 1 or self.groups % merge:
            return STOCK_CONV_CALL(self, inputs)
        kernel = block_diagonal(
            keras.ops.cast(self.kernel, self.compute_dtype), self.groups, min(merge, self.groups)
        )
        same = self.strides == 1 and 2 * self.padding == self.kernel_size - 1
        if not same:
            inputs = layers.symmetric_pad(inputs, self.padding)
        padding = "same" if same else "valid"
        return keras.ops.conv(inputs, kernel, strides=self.strides, padding=padding)

    return call


def apply_patches(bn, merge):
    keras.layers.BatchNormalization.call = fused_bn_call if bn == "fused" else STOCK_BN_CALL
    layers.GroupedConv2D.call = merged_conv_call(merge) if merge > 1 else STOCK_CONV_CALL


def _results(model, images, labels):
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]

    def loss(tv):
        logits, new_ntv = model.stateless_call(tv, ntv, images, training=True)
        ce = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        return keras.ops.mean(ce), (logits, new_ntv)

    grads, (logits, new_ntv) = jax.jit(jax.grad(loss, has_aux=True))(tv)
    return [logits, *grads, *new_ntv]


def max_difference(bn, merge):
    """Largest absolute difference of logits, gradients and BN statistics, stock vs patched."""
    rng = np.random.default_rng(0)
    images = rng.normal(1.0, 2.0, size=(4, *CHECK_MODEL["input_shape"])).astype("float32")
    labels = rng.integers(0, 5, 4)
    results = []
    for patches in (("keras", 1), (bn, merge)):
        apply_patches(*patches)
        keras.utils.set_random_seed(0)
        model = build_resnext(**CHECK_MODEL, num_classes=5, conv_impl="grouped")
        results.append(_results(model, images, labels))
    return max(benchmark.max_abs_diff(a, b) for a, b in zip(*results, strict=True))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bn", choices=("keras", "fused"), default="fused")
    parser.add_argument("--merge_groups", type=int, default=1)
    args, rest = parser.parse_known_args(argv)
    difference = max_difference(args.bn, args.merge_groups)
    result = benchmark.run_benchmark(benchmark.parse_args(rest))
    result["variant"] += f" bn={args.bn} merge_groups={args.merge_groups}"
    result["whatif_max_abs_diff"] = difference
    benchmark.emit(result)


if __name__ == "__main__":
    main()
