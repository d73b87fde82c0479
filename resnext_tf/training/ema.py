"""Exponential moving average (EMA) of a model's weights, for validation and export.

Every variable of the model is averaged after each training step,

    ema = decay * ema + (1 - decay) * w

the trainable weights and the BatchNorm moving mean and variance alike, as timm's ModelEmaV2
averages the whole state dict (parameters and buffers). The EMA model therefore normalizes with
an average of the raw model's moving statistics, which themselves move by `1 - bn_momentum`
per step; no separate BN re-estimation pass is needed, but with a decay close to 1 the EMA needs
on the order of 1 / (1 - decay) steps before its statistics (and weights) leave the initial
values behind.

With `warmup`, the decay of the update after the optimizer's step `s` (1 at the first update)
is

    min(decay, (1 + s) / (10 + s))

the `num_updates` rule of TensorFlow's tf.train.ExponentialMovingAverage: 0.18 at the first
update, 0.55 at step 10, `decay` from step (10 * decay - 1) / (1 - decay) on (890 for 0.99,
89,990 for 0.9999). The average thus spans about the last s / 9 steps until then, instead of
keeping a share decay**s of the initial weights (8% after 248 steps at 0.99). The step is the
optimizer's iteration count, which checkpoints hold, so a resumed run continues the same
decays.

Keras ops only, so the average runs on any backend. Under tf.distribute the update runs in
replica context: each replica averages its own copy (the trainable weights are identical on
all replicas; BatchNorm statistics are per replica unless BatchNorm is synchronized, as in the
raw model), with no communication.
"""

import keras

# The constant of (1 + s) / (WARMUP_STEPS + s): the first update keeps 1 / WARMUP_STEPS of the
# old average (at s = 0).
WARMUP_STEPS = 10


def warmed_up_decay(decay, step, warmup=True):
    """The decay of the update after optimizer step `step`: min(decay, (1 + step) / (10 + step))
    with `warmup`, else `decay` (Python numbers; `WeightEMA.decay_at` is the in-graph form)."""
    if not warmup:
        return decay
    return min(decay, (1.0 + step) / (WARMUP_STEPS + step))


class WeightEMA:
    """Keeps `average` (a model of the same architecture) at the EMA of `model`'s variables.

    Args:
        model: the model being trained.
        average: a second instance of the same architecture that holds the averages; it is
            evaluated, checkpointed and exported in place of `model` when the EMA is on.
        decay: in (0, 1); the weight of the old average at each step (its largest value with
            `warmup`).
        warmup: warm the decay up, min(decay, (1 + step) / (10 + step)); `update` then needs
            the optimizer's step.

    Raises:
        ValueError: for a decay outside (0, 1) or models whose variables differ.
    """

    def __init__(self, model, average, decay, warmup=False):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1); received ema_decay={decay!r}.")
        shapes = [tuple(v.shape) for v in model.weights]
        if shapes != [tuple(v.shape) for v in average.weights]:
            raise ValueError(
                f"The EMA model's variables differ from the model's; received {len(shapes)} "
                f"variables against {len(average.weights)}; expected the same architecture."
            )
        self.model = model
        self.average = average
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.reset()

    def reset(self):
        """Starts the average from the model's current weights (a fresh or retrained run)."""
        for average, value in zip(self.average.weights, self.model.weights, strict=True):
            average.assign(value)

    def decay_at(self, step=None):
        """The decay of the update after optimizer step `step` (a count, tensor or number):
        a float32 tensor with `warmup`, else the constant Python float.

        Raises:
            ValueError: with `warmup` and no step.
        """
        if not self.warmup:
            return self.decay
        if step is None:
            raise ValueError(
                "A warmed-up EMA needs the optimizer's step; received step=None; pass "
                "optimizer.iterations (or construct WeightEMA with warmup=False)."
            )
        step = keras.ops.cast(step, "float32")
        ramp = keras.ops.divide(keras.ops.add(step, 1.0), keras.ops.add(step, float(WARMUP_STEPS)))
        return keras.ops.minimum(keras.ops.cast(self.decay, "float32"), ramp)

    def update(self, step=None):
        """One EMA step; call after each optimizer step (inside the replica function).

        Args:
            step: the optimizer's step count, this step included (`optimizer.iterations` read
                after the update); needed with `warmup`, ignored without.
        """
        decay = self.decay_at(step)
        rest = keras.ops.subtract(1.0, decay) if self.warmup else 1.0 - decay
        for average, value in zip(self.average.weights, self.model.weights, strict=True):
            old, new = keras.ops.cast(decay, average.dtype), keras.ops.cast(rest, average.dtype)
            average.assign(
                keras.ops.add(keras.ops.multiply(average, old), keras.ops.multiply(value, new))
            )
