"""What-if experiment: the TensorFlow benchmark with TF-native kernels in place of Keras ops.

    python benchmarks/tf_native_ops.py --native=conv,bn --mode=train --image_size=112

Not the library: this script patches two Keras-level calls for one process, to measure what
the pure-Keras model leaves on the table on TensorFlow CPU:
  conv  GroupedConv2D runs one tf.nn.conv2d for any number of groups. oneDNN (on by default in
        x86 TensorFlow builds) implements grouped convolutions and their gradients without
        XLA; Keras' ops.conv instead wraps every grouped convolution in an XLA function.
  bn    BatchNormalization runs the fused kernel (FusedBatchNormV3) instead of Keras 3's
        moments + batch_normalization (several element-wise passes and their gradients).
Before timing it checks, on a small model, that outputs, gradients and moving statistics
match the stock layers, and records the largest differences in the result. The remaining
arguments are `resnext_tf.benchmark`'s.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from resnext_tf import benchmark, build_resnext, layers  # noqa: E402

NATIVE = ("conv", "bn")
# Small model and batch of the equivalence check.
CHECK_MODEL = dict(depth=11, stem="cifar", cardinality=4, base_width=4, input_shape=(8, 8, 3))


def native_grouped_call(self, inputs):
    """GroupedConv2D.call with one tf.nn.conv2d whatever the number of groups."""
    kernel = tf.cast(self.kernel, self.compute_dtype)
    same = self.strides == 1 and 2 * self.padding == self.kernel_size - 1
    if not same:
        inputs = layers.symmetric_pad(inputs, self.padding)
    return tf.nn.conv2d(inputs, kernel, self.strides, "SAME" if same else "VALID")


def fused_batchnorm_call(self, inputs, training=None, mask=None):
    """BatchNormalization.call on FusedBatchNormV3 (axis -1, no mask, no renorm)."""
    x = tf.cast(inputs, tf.float32)
    if not (training and self.trainable):
        y = tf.compat.v1.nn.fused_batch_norm(
            x, self.gamma, self.beta, self.moving_mean, self.moving_variance,
            epsilon=self.epsilon, is_training=False,
        )[0]  # fmt: skip
        return tf.cast(y, self.compute_dtype)
    y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        x, self.gamma, self.beta, epsilon=self.epsilon, is_training=True
    )
    # The kernel returns the Bessel-corrected variance; Keras averages the biased one.
    count = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
    variance = variance * (count - 1) / count
    self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1 - self.momentum))
    self.moving_variance.assign(
        self.moving_variance * self.momentum + variance * (1 - self.momentum)
    )
    return tf.cast(y, self.compute_dtype)


PATCHES = {
    "conv": (layers.GroupedConv2D, native_grouped_call),
    "bn": (keras.layers.BatchNormalization, fused_batchnorm_call),
}


def _outputs_and_grads(model, images, labels):
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    grads = tape.gradient(loss, model.trainable_variables)
    stats = [v for v in model.non_trainable_variables if "moving" in v.path]
    return [logits, *grads, *[tf.identity(v) for v in stats], model(images, training=False)]


def max_differences(native):
    """Runs a small model stock, then patched; returns the largest absolute differences."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, *CHECK_MODEL["input_shape"])).astype("float32")
    labels = rng.integers(0, 5, 4)
    results = []
    for patched in (False, True):
        keras.utils.set_random_seed(0)
        model = build_resnext(**CHECK_MODEL, num_classes=5, conv_impl="split")
        if patched:
            apply_patches(native)
        results.append(_outputs_and_grads(model, images, labels))
    return max(benchmark.max_abs_diff(a, b) for a, b in zip(*results, strict=True))


def apply_patches(native):
    for name in native:
        cls, call = PATCHES[name]
        cls.call = call


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--native", default="conv,bn", help=f"comma-separated, of {NATIVE}")
    args, rest = parser.parse_known_args(argv)
    native = [n for n in args.native.split(",") if n]
    for name in native:
        if name not in NATIVE:
            raise ValueError(f"Unknown native op; received {name!r}, expected one of {NATIVE}.")
    difference = max_differences(native)
    result = benchmark.run_benchmark(benchmark.parse_args(rest))
    result["variant"] += " native:" + "+".join(native)
    result["native_max_abs_diff"] = difference
    benchmark.emit(result)


if __name__ == "__main__":
    main()
