"""JAX kernels behind the model layers; `resnext_tf.backend_ops` imports this module only when
Keras runs on the JAX backend.

Training-mode batch normalization as one function with a hand-written gradient. Keras' own
JAX path computes the statistics with `jnp.mean` and `jnp.var` (the variance re-reads its
input after the mean) and lets autodiff differentiate through both, which leaves XLA several
passes over every activation in the backward pass. Here the forward pass reads the input
once for both statistics (a sum and a sum of squares, which XLA computes as one multi-output
reduction) and once to normalize; the backward pass reads the input and the incoming gradient
once for the two channel sums and once more to write the input gradient, the minimum for
batch normalization. Statistics are computed in float32 whatever the input dtype.
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
    """Per-channel mean and biased variance of x (last axis is channels), one pass.

    The sum of squares is taken about `shift` (a close guess of the mean, e.g. the moving
    mean), which keeps E[(x-s)^2] - E[x-s]^2 accurate when |mean| is large against the spread.
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
      x: Activations, channels last, any float dtype; the output has the same dtype.
      gamma: float32 scale, shape (channels,).
      beta: float32 offset, shape (channels,).
      shift: float32 guess of the batch mean, shape (channels,) or scalar; no gradient flows
        into it.
      epsilon: Added to the variance.

    Returns:
      (y, mean, variance): the normalized output and the float32 batch mean and biased
      variance, as Keras' `ops.moments` defines them.
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
    # d/dx of gamma * xhat + beta through the batch statistics, plus the direct use of the
    # returned mean and variance (zero when they only feed the moving averages).
    dx = (gamma * inv / count) * (count * dy - dbeta - xhat * dgamma)
    dx = dx + (dmean + 2.0 * dvariance * centred) / count
    return dx.astype(x.dtype), dgamma, dbeta, jnp.zeros_like(shift)


batch_norm_train.defvjp(_forward, _backward)
