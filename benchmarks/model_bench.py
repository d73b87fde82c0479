"""Throughput harness: images/s and peak memory of a registered model on any Keras backend.

    KERAS_BACKEND=tensorflow python -m benchmarks.model_bench --model=resnext50_32x4d \
        --mode=train --batch_size=16 --image_size=112 --conv_impl=split

Synthetic data is placed on the accelerator once; `--data_dir` feeds the real input pipeline
(`resnext_tf.data`) instead. A train step is one SGD-momentum update on softmax cross-entropy,
compiled the way the backend runs fastest: a tf.function on TensorFlow (XLA per
`--jit_compile`), a jax.jit with the model and optimizer state donated on JAX, Keras'
`train_on_batch` on PyTorch. Throughput is the median (and min / max) over several timed
windows after a warm-up that includes compilation. The last line printed is JSON (prefixed
with `benchmarks.timing.JSON_PREFIX`) for `benchmarks.compare`. Run it from the repository
root (the `benchmarks` package is not installed with resnext_tf).
"""

import argparse
import dataclasses

import keras
import numpy as np

from benchmarks.timing import (
    MODES,
    emit,
    machine_load,
    peak_host_memory_mb,
    throughput,
    time_windows,
)
from resnext_tf import fold, hardware, recipes
from resnext_tf.backend_ops import CONV_IMPLS, resolve_conv_impl
from resnext_tf.registry import create_model, list_models

# Keras dtype policy of each --dtype; float16 training adds dynamic loss scaling.
DTYPE_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
# The dtype of the folded graph (`resnext_tf.fold.fold_batchnorm`) of each --dtype it computes in.
FOLD_DTYPES = {"float32": "float32", "bfloat16": "bfloat16"}
JIT_CHOICES = ("auto", "true", "false")


def field_choices():
    """The allowed values of the `BenchmarkConfig` fields that take one of a list."""
    return {
        "model": tuple(list_models()),
        "mode": MODES,
        "dtype": tuple(DTYPE_POLICIES),
        "conv_impl": CONV_IMPLS,
        "jit_compile": JIT_CHOICES,
    }


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """What to measure.

    Attributes:
      model: A name from `resnext_tf.list_models()`.
      mode: "train" (forward, backward, SGD update) or "infer" (forward, inference mode).
      batch_size: Images per step.
      image_size: Side of the square synthetic images (ignored with `data_dir`'s own size).
      dtype: "float32", "bfloat16" or "float16" (mixed precision for the last two).
      conv_impl: Grouped convolution implementation: "auto", "grouped", "split" or
        "block_diagonal" (resnext_tf.backend_ops.CONV_IMPLS).
      jit_compile: "auto" (XLA on TensorFlow only with a GPU, as Keras decides), "true" or
        "false". JAX always compiles; PyTorch runs eagerly.
      fold_bn: Inference only, TensorFlow backend: run the graph with every BatchNormalization
        folded into the preceding convolution that the exports ship
        (`resnext_tf.fold.fold_batchnorm`), in float32, or in bfloat16 with
        dtype="bfloat16" (float32 images in, float32 logits out).
      steps: Steps in one timed window.
      windows: Number of timed windows.
      warmup: Untimed steps first (compilation, autotuning, allocator warm-up).
      data_dir: Read batches from the ImageNet input pipeline at this folder instead.
      intra_op_threads: TensorFlow intra-op threads (0: TensorFlow's default).
      inter_op_threads: TensorFlow inter-op threads (0: TensorFlow's default).
    """

    model: str = "resnext50_32x4d"
    mode: str = "train"
    batch_size: int = 16
    image_size: int = 224
    dtype: str = "float32"
    conv_impl: str = "auto"
    jit_compile: str = "auto"
    fold_bn: bool = False
    steps: int = 5
    windows: int = 3
    warmup: int = 2
    data_dir: str | None = None
    intra_op_threads: int = 0
    inter_op_threads: int = 0

    def __post_init__(self):
        for name, allowed in field_choices().items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"Unknown {name}; received {name}={getattr(self, name)!r}, "
                    f"expected one of {allowed}."
                )
        for name in ("batch_size", "image_size", "steps", "windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; received {name}={getattr(self, name)!r}.")
        if self.fold_bn and (self.mode != "infer" or keras.backend.backend() != "tensorflow"):
            raise ValueError(
                "fold_bn is an inference graph of the TensorFlow backend; received "
                f"fold_bn=True with mode={self.mode!r}, backend={keras.backend.backend()!r}."
            )
        if self.fold_bn and self.dtype not in FOLD_DTYPES:
            raise ValueError(
                f"fold_bn computes in one of {tuple(FOLD_DTYPES)}; received fold_bn=True with "
                f"dtype={self.dtype!r}."
            )


def max_abs_diff(a, b):
    """Largest absolute difference of two tensors, as a float."""
    return float(np.max(np.abs(keras.ops.convert_to_numpy(a) - keras.ops.convert_to_numpy(b))))


# ----------------------------------------------------------------------------------------------
# Steps per backend. Each returns (step, sync); step(images, labels) runs one step.


def _optimizer(dtype):
    optimizer = keras.optimizers.SGD(recipes.LR, momentum=recipes.MOMENTUM)
    return keras.optimizers.LossScaleOptimizer(optimizer) if dtype == "float16" else optimizer


def _loss_fn():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _tensorflow_steps(model, cfg):
    import tensorflow as tf

    jit = {"auto": bool(tf.config.list_physical_devices("GPU")), "true": True, "false": False}
    jit = jit[cfg.jit_compile]
    if cfg.mode == "infer":
        # The folded copy reads the weights once: fold again after changing them.
        forward = fold.fold_batchnorm(model, FOLD_DTYPES[cfg.dtype]) if cfg.fold_bn else model
        step = tf.function(lambda images, labels: forward(images, training=False), jit_compile=jit)
    else:
        optimizer, loss_fn = _optimizer(cfg.dtype), _loss_fn()
        optimizer.build(model.trainable_variables)

        @tf.function(jit_compile=jit)
        def step(images, labels):
            with tf.GradientTape() as tape:
                loss = loss_fn(labels, model(images, training=True))
                scaled = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
            return loss

    return step, lambda out: out.numpy(), jit


def _jax_steps(model, cfg):
    import jax

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    if cfg.mode == "infer":
        forward = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
        return (
            lambda images, labels: forward(trainable, non_trainable, images),
            jax.block_until_ready,
            True,
        )
    optimizer, loss_fn = _optimizer(cfg.dtype), _loss_fn()
    optimizer.build(model.trainable_variables)

    def loss_and_state(tv, ntv, opt_vars, images, labels):
        logits, ntv = model.stateless_call(tv, ntv, images, training=True)
        loss = loss_fn(labels, logits)
        mapping = zip(optimizer.variables, opt_vars, strict=True)
        with keras.StatelessScope(state_mapping=mapping):
            scaled = optimizer.scale_loss(loss)
        return scaled, (loss, ntv)

    def train(state, images, labels):
        tv, ntv, opt_vars = state
        grads, (loss, ntv) = jax.grad(loss_and_state, has_aux=True)(
            tv, ntv, opt_vars, images, labels
        )
        tv, opt_vars = optimizer.stateless_apply(opt_vars, grads, tv)
        return loss, (tv, ntv, opt_vars)

    # The model and optimizer state are donated: XLA updates them in place.
    train = jax.jit(train, donate_argnums=0)
    state = [(trainable, non_trainable, [v.value for v in optimizer.variables])]

    def step(images, labels):
        loss, state[0] = train(state[0], images, labels)
        return loss

    return step, jax.block_until_ready, True


def _torch_steps(model, cfg):
    import torch

    model.compile(optimizer=_optimizer(cfg.dtype), loss=_loss_fn(), jit_compile=False)
    if cfg.mode == "infer":
        step = lambda images, labels: model.predict_on_batch(images)  # noqa: E731
    else:
        step = lambda images, labels: model.train_on_batch(images, labels)  # noqa: E731

    def sync(out):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    return step, sync, False


STEP_BUILDERS = {"tensorflow": _tensorflow_steps, "jax": _jax_steps, "torch": _torch_steps}


def device_peak_memory_mb():
    """Peak accelerator memory in MB where the backend reports it, else None."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        peak = tf.config.experimental.get_memory_info(gpus[0].name)["peak"] if gpus else None
    else:
        import torch

        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    return None if peak is None else round(peak / 2**20, 1)


def _batches(cfg):
    """Yields (images, labels) forever: one synthetic batch on the device, or the pipeline's."""
    if cfg.data_dir is None:
        rng = np.random.default_rng(0)
        images = rng.standard_normal((cfg.batch_size, cfg.image_size, cfg.image_size, 3))
        labels = rng.integers(0, 1000, cfg.batch_size)
        batch = (
            keras.ops.convert_to_tensor(images.astype("float32")),
            keras.ops.convert_to_tensor(labels.astype("int32")),
        )
        while True:
            yield batch
    from resnext_tf.data import DataConfig, build_dataset

    data = DataConfig(dataset="imagenet", data_dir=cfg.data_dir, image_size=cfg.image_size)
    dataset = build_dataset(data, "train", global_batch_size=cfg.batch_size).repeat()
    as_tensor = keras.backend.backend() != "tensorflow"
    for images, labels in dataset:
        if as_tensor:
            images = keras.ops.convert_to_tensor(images.numpy())
            labels = keras.ops.convert_to_tensor(labels.numpy())
        yield images, labels


def _configure_tensorflow_threads(cfg):
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    if cfg.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(cfg.intra_op_threads)
    if cfg.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(cfg.inter_op_threads)


def run_benchmark(cfg):
    """Builds the model, times it and returns the result as a flat dict (see `emit`)."""
    backend = keras.backend.backend()
    _configure_tensorflow_threads(cfg)
    keras.config.set_dtype_policy(DTYPE_POLICIES[cfg.dtype])
    try:
        model = create_model(
            cfg.model,
            conv_impl=cfg.conv_impl,
            input_shape=(cfg.image_size, cfg.image_size, 3),
            num_classes=1000,
        )
    finally:
        keras.config.set_dtype_policy("float32")
    step, sync, jit = STEP_BUILDERS[backend](model, cfg)
    batches = _batches(cfg)
    checks = {}
    if cfg.fold_bn:
        images, labels = next(batches)
        checks["fold_bn_max_abs_diff"] = max_abs_diff(
            step(images, labels), model(images, training=False)
        )
    warmup_s, seconds, cpu_seconds = time_windows(
        lambda: step(*next(batches)), sync, cfg.steps, cfg.windows, cfg.warmup
    )
    impl = resolve_conv_impl(cfg.conv_impl, cfg.dtype)
    variant = f"conv_impl={impl}" + (" fold_bn" if cfg.fold_bn else "") + (" xla" if jit else "")
    return {
        "framework": f"resnext_tf/{backend}",
        "variant": variant,
        "model": cfg.model,
        "mode": cfg.mode,
        "batch_size": cfg.batch_size,
        "image_size": cfg.image_size,
        "dtype": cfg.dtype,
        "conv_impl": impl,
        "conv_impl_requested": cfg.conv_impl,
        "jit_compile": jit,
        "fold_bn": cfg.fold_bn,
        "data": cfg.data_dir or "synthetic",
        "onednn": hardware.onednn_enabled() if backend == "tensorflow" else None,
        **checks,
        **throughput(cfg.batch_size, cfg.steps, seconds, cpu_seconds),
        "warmup_s": round(warmup_s, 1),
        "peak_rss_mb": peak_host_memory_mb(),
        "device_peak_mb": device_peak_memory_mb(),
        "load_avg": machine_load(),
    }


def parse_args(argv):
    """Parses command-line arguments into a `BenchmarkConfig`."""
    defaults = BenchmarkConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    choices = field_choices()
    for field in dataclasses.fields(BenchmarkConfig):
        default = getattr(defaults, field.name)
        flag, described = f"--{field.name}", f"default: {default}"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=described)
        else:
            kind = int if isinstance(default, int) else str
            allowed = choices.get(field.name)
            parser.add_argument(flag, type=kind, choices=allowed, help=described)
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    return dataclasses.replace(defaults, **given)


def main(argv=None):
    emit(run_benchmark(parse_args(argv)))


if __name__ == "__main__":
    main()
