"""JAX kernels behind the model layers, imported only through `resnext_tf.backend_ops`.

Training-mode batch normalization with a hand-written gradient: one read of the input for both
float32 statistics (one multi-output reduction) and one to normalize, and two passes backward,
where autodiff of Keras' `jnp.mean` + `jnp.var` leaves XLA several (docs/performance.md, "GPU").
"""

import functools

import jax
import jax.numpy as jnp


def on_gpu():
    """Whether JAX computes on a GPU by default."""
    return jax.default_backend() == "gpu"


def _reduce_axes(x):
    return tuple(range(x.ndim - 1))


def _statistics(x, shift):
    """Per-channel mean and biased variance of channels-last x in one pass.

    Summing about `shift` (a guess of the mean, e.g. the moving mean) keeps
    E[(x-s)^2] - E[x-s]^2 accurate when |mean| is large against the spread.
    """
    axes = _reduce_axes(x)
    count = x.size // x.shape[-1]
    centred = x.astype(jnp.float32) - shift
    total = jnp.sum(centred, axes)
    squares = jnp.sum(jnp.square(centred), axes)
    mean_shifted = total / count
    variance = jnp.maximum(squares / count - jnp.square(mean_shifted), 0.0)
    return mean_shifted + shift, variance


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def batch_norm_train(x, gamma, beta, shift, epsilon):
    """Training-mode batch normalization over every axis but the last.

    Args:
      x: Activations, channels last, any float dtype (kept by the output).
      gamma, beta: float32 scale and offset, shape (channels,).
      shift: float32 guess of the batch mean, (channels,) or scalar; takes no gradient.
      epsilon: Added to the variance.

    Returns:
      (y, mean, variance), the statistics float32 and as Keras' `ops.moments` defines them.
    """
    return _forward(x, gamma, beta, shift, epsilon)[0]


def _forward(x, gamma, beta, shift, epsilon):
    mean, variance = _statistics(x, jax.lax.stop_gradient(shift))
    inv = jax.lax.rsqrt(variance + epsilon)
    scale = gamma * inv
    y = (x.astype(jnp.float32) * scale + (beta - mean * scale)).astype(x.dtype)
    return (y, mean, variance), (x, mean, inv, gamma, shift)


def _backward(epsilon, residuals, cotangents):
    x, mean, inv, gamma, shift = residuals
    dy, dmean, dvariance = cotangents
    axes = _reduce_axes(x)
    count = x.size // x.shape[-1]
    centred = x.astype(jnp.float32) - mean
    xhat = centred * inv
    dy = dy.astype(jnp.float32)
    dbeta = jnp.sum(dy, axes)
    dgamma = jnp.sum(dy * xhat, axes)
    # Through the batch statistics, plus the returned mean and variance's own cotangents (zero
    # when they only feed the moving averages).
    dx = (gamma * inv / count) * (count * dy - dbeta - xhat * dgamma)
    dx = dx + (dmean + 2.0 * dvariance * centred) / count
    return dx.astype(x.dtype), dgamma, dbeta, jnp.zeros_like(shift)


batch_norm_train.defvjp(_forward, _backward)
