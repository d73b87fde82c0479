"""Times ways to compute ResNeXt-50 32x4d's grouped 3x3 convolutions on TensorFlow, per stage.

    python -m benchmarks.grouped_conv_forms --mode=infer --image_size=224
    python -m benchmarks.grouped_conv_forms --mode=train --image_size=112

Forms (all take the GroupedConv2D kernel layout (3, 3, in / groups, out)):
  split      slice channels, one convolution a group, concatenate (conv_impl="split")
  xla        Keras ops.conv with groups, which Keras compiles with XLA on TensorFlow
             (conv_impl="grouped" where TensorFlow has no native grouped gradient)
  native     one tf.nn.conv2d with the grouped kernel, no XLA (oneDNN, cuDNN;
             resnext_tf.tf_ops.grouped_conv2d, conv_impl="grouped" on TensorFlow)
  depthwise  depthwise convolution with channel multiplier in/groups, then a sum over the
             group's inputs (pure keras.ops)
  blockdiagK merge K (2 or 4) groups into one convolution with a block-diagonal kernel (pure
             keras.ops; K times the multiply-adds, K times fewer convolutions)
"infer" times the forward pass, "train" forward + gradients for input and kernel. Each form is
checked against split first.
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from resnext_tf import tf_ops

# ResNeXt-50 32x4d: cardinality, and (grouped width, spatial division) of the four stages.
GROUPS = 32
STAGES = ((128, 4), (256, 8), (512, 16), (1024, 32))


def split(x, kernel):
    pairs = zip(ops.split(x, GROUPS, -1), ops.split(kernel, GROUPS, -1), strict=True)
    return ops.concatenate([ops.conv(a, k, padding="same") for a, k in pairs], -1)


def xla(x, kernel):
    return ops.conv(x, kernel, padding="same")


def native(x, kernel):
    return tf_ops.grouped_conv2d(x, kernel, 1, "SAME")


def depthwise(x, kernel):
    # Output channel g*d + o sums over inputs i of group g: depthwise weights [.., g*d + i, o].
    kh, kw, d, channels = kernel.shape
    weights = ops.reshape(kernel, (kh, kw, d, GROUPS, d))
    weights = ops.reshape(ops.transpose(weights, (0, 1, 3, 2, 4)), (kh, kw, channels, d))
    y = ops.depthwise_conv(x, weights, padding="same")
    n, h, w, _ = y.shape
    return ops.reshape(ops.sum(ops.reshape(y, (n, h, w, GROUPS, d, d)), axis=4), (n, h, w, -1))


def blockdiag(merge):
    def form(x, kernel):
        kh, kw, d, _ = kernel.shape
        parts = GROUPS // merge
        blocks = ops.reshape(kernel, (kh, kw, d, parts, merge, d))
        # big[h, w, p, a*d + i, b*d + o] = kernel of group p*merge + a if a == b, else 0.
        big = ops.einsum("hwipao,ab->hwpaibo", blocks, ops.eye(merge))
        big = ops.reshape(big, (kh, kw, parts, merge * d, merge * d))
        xs = ops.split(x, parts, -1)
        return ops.concatenate(
            [ops.conv(a, big[:, :, p], padding="same") for p, a in enumerate(xs)], -1
        )

    return form


FORMS = {
    "split": split,
    "xla": xla,
    "native": native,
    "depthwise": depthwise,
    "blockdiag2": blockdiag(2),
    "blockdiag4": blockdiag(4),
}


def timed(fn, args, repeats):
    fn(*args)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    keras.ops.convert_to_numpy(tf.nest.flatten(out)[0])
    return (time.perf_counter() - start) / repeats


def compiled(form, mode):
    if mode == "infer":
        return tf.function(form)

    def grads(x, kernel):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = form(x, kernel)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x, kernel])

    return tf.function(grads)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("infer", "train"), default="infer")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    forms = args.forms.split(",")
    rng = np.random.default_rng(0)
    print(f"{args.mode}, batch {args.batch_size}, {args.image_size}px: ms per convolution")
    print("| stage | shape | " + " | ".join(forms) + " |")
    print("|---|---|" + "---|" * len(forms))
    for stage, (width, division) in enumerate(STAGES, 1):
        side = -(-args.image_size // division)
        x = tf.constant(rng.normal(size=(args.batch_size, side, side, width)), tf.float32)
        kernel = tf.constant(rng.normal(size=(3, 3, width // GROUPS, width)), tf.float32)
        reference = compiled(split, args.mode)(x, kernel)
        cells = []
        for name in forms:
            fn = compiled(FORMS[name], args.mode)
            out = fn(x, kernel)
            for a, b in zip(tf.nest.flatten(out), tf.nest.flatten(reference), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(tf.reduce_max(b)))
            cells.append(f"{1e3 * timed(fn, (x, kernel), args.repeats):.1f}")
        print(f"| {stage} | {side}x{side}x{width} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
