"""Exponential moving average (EMA) of a model's weights, for validation and export.

Every variable of the model is averaged after each training step,

    ema = decay * ema + (1 - decay) * w

the trainable weights and the BatchNorm moving mean and variance alike, as timm's ModelEmaV2
averages the whole state dict (parameters and buffers). The EMA model therefore normalizes with
an average of the raw model's moving statistics, which themselves move by `1 - bn_momentum`
per step; no separate BN re-estimation pass is needed, but with a decay close to 1 the EMA needs
on the order of 1 / (1 - decay) steps before its statistics (and weights) leave the initial
values behind.

Keras ops only, so the average runs on any backend. Under tf.distribute the update runs in
replica context: each replica averages its own copy (the trainable weights are identical on
all replicas; BatchNorm statistics are per replica unless BatchNorm is synchronized, as in the
raw model), with no communication.
"""

import keras


class WeightEMA:
    """Keeps `average` (a model of the same architecture) at the EMA of `model`'s variables.

    Args:
        model: the model being trained.
        average: a second instance of the same architecture that holds the averages; it is
            evaluated, checkpointed and exported in place of `model` when the EMA is on.
        decay: in (0, 1); the weight of the old average at each step.

    Raises:
        ValueError: for a decay outside (0, 1) or models whose variables differ.
    """

    def __init__(self, model, average, decay):
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
        self.reset()

    def reset(self):
        """Starts the average from the model's current weights (a fresh or retrained run)."""
        for average, value in zip(self.average.weights, self.model.weights, strict=True):
            average.assign(value)

    def update(self):
        """One EMA step; call after each optimizer step (inside the replica function)."""
        for average, value in zip(self.average.weights, self.model.weights, strict=True):
            decay = keras.ops.cast(self.decay, average.dtype)
            rest = keras.ops.cast(1.0 - self.decay, average.dtype)
            average.assign(
                keras.ops.add(keras.ops.multiply(average, decay), keras.ops.multiply(value, rest))
            )
