"""Numerics and speed flags: precision, XLA, determinism."""

from absl import flags

from resnext_tf.training.config import DTYPES


def define_flags(flag_values):
    """Defines dtype, jit_compile and deterministic."""
    flags.DEFINE_enum(
        "dtype",
        "float32",
        DTYPES,
        "Keras precision policy; mixed_float16 adds dynamic loss scaling (GPU), "
        "mixed_bfloat16 suits TPUs and recent GPUs.",
        flag_values=flag_values,
    )
    flags.DEFINE_boolean(
        "jit_compile",
        False,
        "Compile the forward and backward pass with XLA.",
        flag_values=flag_values,
    )
    flags.DEFINE_boolean(
        "deterministic",
        False,
        "Deterministic TensorFlow ops and one inter-op thread: with the seeded input pipeline, "
        "reruns and resumed runs reproduce the weights bit for bit on one device.",
        flag_values=flag_values,
    )
