"""resnext_tf.jax_ops: the fused batch normalization against plain JAX autodiff."""

import textwrap

import jax
import numpy as np
import pytest
from child_process import run_jax_child

from resnext_tf import jax_ops

jnp = jax.numpy

EPSILON = 1e-5


def reference(x, gamma, beta):
    """Batch normalization written directly, differentiated by JAX."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, (0, 1, 2))
    variance = jnp.mean(jnp.square(x - mean), (0, 1, 2))
    y = (x - mean) * jax.lax.rsqrt(variance + EPSILON) * gamma + beta
    return y, mean, variance


def _inputs(rng, dtype, offset):
    x = rng.normal(offset, 3.0, size=(4, 5, 6, 8)).astype(np.float32)
    gamma = rng.normal(1.0, 0.5, size=8).astype(np.float32)
    beta = rng.normal(0.0, 0.5, size=8).astype(np.float32)
    return jnp.asarray(x, dtype), jnp.asarray(gamma), jnp.asarray(beta)


@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_forward_and_vjp_match_autodiff(offset):
    rng = np.random.default_rng(1)
    x, gamma, beta = _inputs(rng, jnp.float32, offset)
    shift = jnp.asarray(rng.normal(offset, 1.0, size=8), jnp.float32)
    ours, ours_vjp = jax.vjp(
        lambda x, g, b: jax_ops.batch_norm_train(x, g, b, shift, EPSILON), x, gamma, beta
    )
    ref, ref_vjp = jax.vjp(reference, x, gamma, beta)
    # Random cotangents on all three outputs, the statistics included.
    cotangents = tuple(jnp.asarray(rng.normal(size=r.shape), jnp.float32) for r in ref)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * (1 + offset))
    for a, b in zip(ours_vjp(cotangents), ref_vjp(cotangents), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)


def test_shift_keeps_large_means_accurate():
    """With the moving mean as shift, one-pass variance stays exact for |mean| >> std."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(1000.0, 0.01, size=(8, 4, 4, 3)), jnp.float32)
    ones, zeros = jnp.ones(3), jnp.zeros(3)
    _, _, variance = jax_ops.batch_norm_train(x, ones, zeros, jnp.full(3, 1000.0), EPSILON)
    expected = np.var(np.asarray(x, np.float64), axis=(0, 1, 2))
    np.testing.assert_allclose(variance, expected, rtol=1e-3)


def test_bfloat16_input_keeps_dtype_and_float32_statistics():
    rng = np.random.default_rng(3)
    x, gamma, beta = _inputs(rng, jnp.bfloat16, 2.0)
    y, mean, variance = jax_ops.batch_norm_train(x, gamma, beta, jnp.zeros(8), EPSILON)
    assert y.dtype == jnp.bfloat16 and mean.dtype == variance.dtype == jnp.float32
    ref_y, ref_mean, ref_variance = reference(x, gamma, beta)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(variance, ref_variance, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(y, np.float32), ref_y, rtol=2e-2, atol=2e-2)
    dx = jax.grad(lambda x: jnp.sum(jax_ops.batch_norm_train(x, gamma, beta, 0.0, EPSILON)[0]))(x)
    assert dx.dtype == jnp.bfloat16


# The model layers on the JAX backend (a child process: this one runs TensorFlow's backend).
JAX_LAYERS_CHILD = textwrap.dedent(
    """
    import jax, keras, numpy as np
    from resnext_tf import build_resnext, layers

    assert keras.backend.backend() == "jax"
    TINY = dict(depth=11, stem="cifar", cardinality=8, base_width=4, input_shape=(8, 8, 3))
    rng = np.random.default_rng(0)
    images = rng.normal(1.0, 2.0, size=(4, 8, 8, 3)).astype("float32")
    labels = rng.integers(0, 5, 4)

    def run(conv_impl, policy="float32"):
        keras.config.set_dtype_policy(policy)
        keras.utils.set_random_seed(0)
        model = build_resnext(**TINY, num_classes=5, conv_impl=conv_impl)
        keras.config.set_dtype_policy("float32")
        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]

        def loss(tv):
            logits, new_ntv = model.stateless_call(tv, ntv, images, training=True)
            ce = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            return keras.ops.mean(ce), (logits, new_ntv)

        grads, (logits, new_ntv) = jax.jit(jax.grad(loss, has_aux=True))(tv)
        infer = model.stateless_call(tv, new_ntv, images, training=False)[0]
        return [np.asarray(t, np.float32) for t in (logits, infer, *grads, *new_ntv)]

    def max_diff(a, b):
        return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))

    keras_bn = layers.BatchNorm._fused
    fused = run("grouped")
    layers.BatchNorm._fused = lambda self, inputs, mask, training: None
    stock = run("grouped")
    stock_bf16 = run("grouped", "mixed_bfloat16")
    layers.BatchNorm._fused = keras_bn
    fused_bf16 = run("grouped", "mixed_bfloat16")
    merged = run("block_diagonal")
    print("fused_vs_keras", max_diff(fused, stock))
    print("bf16_fused_vs_keras", max_diff(fused_bf16, stock_bf16))
    print("block_diagonal_vs_grouped", max_diff(merged, fused))
    print("changed", max_diff(fused, run("split")) < 1e-4, max_diff(stock, stock_bf16) > 1e-4)
    """
)


def test_jax_layers_match_keras_batchnorm_and_grouped_conv():
    """BatchNorm's JAX path against Keras' own BN, block_diagonal against grouped: logits,
    inference logits, every gradient and the updated moving statistics."""
    out = run_jax_child(JAX_LAYERS_CHILD)
    figures = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert float(figures["fused_vs_keras"]) < 1e-4, figures
    # Keras rounds the bf16 batch statistics to bf16; the fused path keeps them in float32.
    assert float(figures["bf16_fused_vs_keras"]) < 0.1, figures
    assert float(figures["block_diagonal_vs_grouped"]) < 1e-4, figures
    assert figures["changed"] == "True True", figures
