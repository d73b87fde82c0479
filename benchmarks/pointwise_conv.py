"""Times ResNeXt-50 32x4d's 1x1 convolutions on TensorFlow as convolutions and as matrix products.

    python -m benchmarks.pointwise_conv --mode=train --image_size=112
    python -m benchmarks.pointwise_conv --mode=infer --image_size=224 --batch_size=1

Forms (both take the GroupedConv2D kernel layout (1, 1, in, out)):
  conv    tf.nn.conv2d (oneDNN on x86 CPUs, which reorders the kernel into its blocked layout
          at every call)
  matmul  the stride applied by slicing, then one tf.matmul of (positions, in) by (in, out)
          (resnext_tf.tf_ops.pointwise_conv2d)
"infer" times the forward pass followed by inference batch normalization and ReLU, as the model
runs them (TensorFlow fuses them into the convolution, not into the matrix product); "train"
times forward + gradients for input and kernel. The last column is the form that
resnext_tf.tf_ops.pointwise_as_matmul picks for the shape, which GroupedConv2D follows.

    python -m benchmarks.pointwise_conv --whole_model --mode=train --image_size=112

times the whole resnext50_32x4d step of benchmarks.model_bench instead, twice in one process:
with the library's rule and with every 1x1 as a convolution, the two steps called in turn so
that the machine's drift falls on both alike.
"""

import argparse
import time

import numpy as np
import tensorflow as tf

from benchmarks import model_bench
from benchmarks.grouped_conv_forms import compiled, timed
from resnext_tf import tf_ops

# ResNeXt-50 32x4d: (grouped width, output channels, spatial division) of the four stages.
STAGES = ((128, 256, 4), (256, 512, 8), (512, 1024, 16), (1024, 2048, 32))


def conv(strides):
    return lambda x, kernel: tf.nn.conv2d(x, kernel, strides, "VALID")


def matmul(strides):
    return lambda x, kernel: tf_ops.pointwise_conv2d(x, kernel, strides)


FORMS = {"conv": conv, "matmul": matmul}


def with_batch_norm(form, channels):
    """form followed by inference FusedBatchNormV3 and ReLU, with fixed random statistics."""
    rng = np.random.default_rng(1)
    scale, offset, mean = (tf.constant(rng.normal(size=channels), tf.float32) for _ in range(3))
    variance = tf.constant(rng.uniform(0.5, 1.5, size=channels), tf.float32)

    def apply(x, kernel):
        y = tf.raw_ops.FusedBatchNormV3(
            x=form(x, kernel),
            scale=scale,
            offset=offset,
            mean=mean,
            variance=variance,
            epsilon=1e-5,
            data_format="NHWC",
            is_training=False,
        )[0]
        return tf.nn.relu(y)

    return apply


def shapes(image_size):
    """(spatial side of the input, in, out, stride) of each distinct 1x1 convolution."""
    previous = 64
    for width, out, division in STAGES:
        side = -(-image_size // division)
        stride = 1 if division == 4 else 2
        yield side * stride, previous, width, 1  # conv1 of the first block
        yield side, out, width, 1  # conv1 of the later blocks
        yield side, width, out, 1  # conv3
        yield side * stride, previous, out, stride  # projection shortcut of the first block
        previous = out


def whole_model(args):
    """Median step times of the model with the library's rule and with convolutions only."""
    cfg = model_bench.BenchmarkConfig(
        mode=args.mode, batch_size=args.batch_size, image_size=args.image_size
    )
    images, labels = next(model_bench._batches(cfg))
    rule = tf_ops.POINTWISE_MATMUL_MIN_RATIO
    steps = {}
    for name, ratio in (("as picked", rule), ("all conv", float("inf"))):
        # The rule is read when a step is traced: trace each step under its own setting.
        tf_ops.POINTWISE_MATMUL_MIN_RATIO = ratio
        model = model_bench.create_model(
            "resnext50_32x4d", input_shape=(args.image_size, args.image_size, 3)
        )
        step, sync, _ = model_bench._tensorflow_steps(model, cfg)
        for _ in range(2):
            sync(step(images, labels))
        steps[name] = step, sync
    tf_ops.POINTWISE_MATMUL_MIN_RATIO = rule
    seconds = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, (step, sync) in steps.items():
            start = time.perf_counter()
            sync(step(images, labels))
            seconds[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * float(np.median(s)) for name, s in seconds.items()}
    print(
        f"{args.mode}, batch {args.batch_size}, {args.image_size}px, median of {args.repeats} "
        f"steps: as picked {ms['as picked']:.1f} ms, all conv {ms['all conv']:.1f} ms "
        f"({ms['all conv'] / ms['as picked']:.3f}x)"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("infer", "train"), default="train")
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--whole_model", action="store_true", help="time the whole model step")
    args = parser.parse_args(argv)
    if args.whole_model:
        return whole_model(args)
    rng = np.random.default_rng(0)
    print(f"{args.mode}, batch {args.batch_size}, {args.image_size}px: ms per convolution")
    print("| input | in -> out | stride | conv | matmul | conv / matmul | picked |")
    print("|---|---|---|---|---|---|---|")
    totals = dict.fromkeys(FORMS, 0.0)
    picked_total = 0.0
    for side, cin, cout, stride in shapes(args.image_size):
        x = tf.constant(rng.normal(size=(args.batch_size, side, side, cin)), tf.float32)
        kernel = tf.constant(rng.normal(size=(1, 1, cin, cout)) / np.sqrt(cin), tf.float32)
        times, outputs = {}, {}
        for name, make in FORMS.items():
            form = make(stride)
            if args.mode == "infer":
                form = with_batch_norm(form, cout)
            fn = compiled(form, args.mode)
            outputs[name] = tf.nest.flatten(fn(x, kernel))
            times[name] = 1e3 * timed(fn, (x, kernel), args.repeats)
            totals[name] += times[name]
        for a, b in zip(outputs["matmul"], outputs["conv"], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(tf.reduce_max(b)))
        picked = "matmul" if tf_ops.pointwise_as_matmul(x.shape, stride, cout) else "conv"
        picked_total += times[picked]
        print(
            f"| {side}x{side} | {cin} -> {cout} | {stride} | {times['conv']:.2f} | "
            f"{times['matmul']:.2f} | {times['conv'] / times['matmul']:.2f} | {picked} |",
            flush=True,
        )
    print(
        f"sum: conv {totals['conv']:.1f} ms, matmul {totals['matmul']:.1f} ms, as picked "
        f"{picked_total:.1f} ms ({totals['conv'] / picked_total:.2f}x all-conv)"
    )


if __name__ == "__main__":
    main()
