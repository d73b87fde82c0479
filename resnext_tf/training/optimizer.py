"""SGD with the exact update rule of Torch's optim.sgd, as used by fb.resnet.torch.

Keras' SGD keeps v = m * v - lr * g, which differs from Torch's v = m * v + g right after a
learning-rate change, and decouples its weight decay; hence this class, in keras.ops only so it
runs on every backend. The rule is written out in docs/training.md, "Optimiser and schedules".
"""

import keras
from keras import ops

from resnext_tf import recipes

# Kinds of variables that can be exempted from weight decay (--no_weight_decay_on).
NO_DECAY_KINDS = ("bn", "bias")


def no_decay_variables(model, kinds):
    """The trainable variables of `model` that `kinds` exempt from weight decay, in order.

    Args:
        model: a Keras model.
        kinds: subset of NO_DECAY_KINDS: "bn", gamma and beta of every BatchNormalization;
            "bias", every variable named "bias" (in ResNeXt only the classifier's).

    Raises:
        ValueError: for an unknown kind.
    """
    unknown = [kind for kind in kinds if kind not in NO_DECAY_KINDS]
    if unknown:
        raise ValueError(
            f"Unknown no_weight_decay_on kind; received {unknown[0]!r}; expected a subset of "
            f"{NO_DECAY_KINDS}."
        )
    chosen = set()
    if "bn" in kinds:
        # _flatten_layers walks nested layers (the blocks hold their BatchNorms).
        for layer in model._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                chosen.update(id(v) for v in (layer.gamma, layer.beta) if v is not None)
    variables = model.trainable_variables
    if "bias" in kinds:
        chosen.update(id(v) for v in variables if v.name == "bias")
    return [v for v in variables if id(v) in chosen]


@keras.saving.register_keras_serializable(package="resnext_tf")
class TorchSGD(keras.optimizers.Optimizer):
    """Momentum SGD with Torch semantics and coupled L2 weight decay.

    Args:
        learning_rate: float, `LearningRateSchedule` or callable.
        momentum: momentum factor in [0, 1).
        nesterov: use Nesterov momentum (the fb.resnet.torch setting).
        weight_decay: coupled L2 factor added to the gradient of every trainable variable
            but those of `exclude_from_l2`.
        name: optimizer name.
        **kwargs: other `keras.optimizers.Optimizer` arguments (clipping, EMA, loss scale...).

    Raises:
        ValueError: for momentum outside [0, 1), weight_decay < 0, or Nesterov without momentum.
    """

    def __init__(
        self,
        learning_rate=recipes.LR,
        momentum=recipes.MOMENTUM,
        nesterov=recipes.NESTEROV,
        weight_decay=recipes.WEIGHT_DECAY,
        name="torch_sgd",
        **kwargs,
    ):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1); received momentum={momentum!r}.")
        if weight_decay is None or weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0; received weight_decay={weight_decay!r}.")
        if nesterov and momentum == 0.0:
            raise ValueError(
                f"Nesterov momentum needs momentum > 0; received momentum={momentum!r}, "
                f"nesterov={nesterov!r}."
            )
        # The base class' weight_decay is decoupled (AdamW style); update_step couples it.
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.l2 = float(weight_decay)
        self._no_l2_keys = set()
        self._l2_mask = []

    def exclude_from_l2(self, variables):
        """Applies no weight decay to `variables` (e.g. BatchNorm gamma/beta and biases, as
        timm and torchvision allow).

        Raises:
            ValueError: when called after `build` (the mask is fixed when the optimizer builds).
        """
        if self.built:
            raise ValueError(
                "exclude_from_l2 must be called before the optimizer is built; received a call "
                "after build()."
            )
        self._no_l2_keys = {self._var_key(v) for v in variables}

    def build(self, variables):
        """Creates one zero velocity per trainable variable: exact, as Torch's first velocity
        is the first gradient, momentum * 0 + g."""
        if self.built:
            return
        super().build(variables)
        # Per variable index, as the velocities: whether the coupled L2 term applies.
        self._l2_mask = [self._var_key(v) not in self._no_l2_keys for v in variables]
        self.velocities = []
        if self.momentum:
            self.velocities = self.add_optimizer_variables(variables, "velocity")

    def update_step(self, gradient, variable, learning_rate):
        """Applies the Torch update to one variable."""
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if self.l2 and self._l2_mask[self._get_variable_index(variable)]:
            g = ops.add(g, ops.multiply(ops.cast(self.l2, variable.dtype), variable))
        if not self.momentum:
            self.assign_sub(variable, ops.multiply(lr, g))
            return
        m = ops.cast(self.momentum, variable.dtype)
        v = self.velocities[self._get_variable_index(variable)]
        new_v = ops.add(ops.multiply(m, v), g)
        self.assign(v, new_v)
        step = ops.add(g, ops.multiply(m, new_v)) if self.nesterov else new_v
        self.assign_sub(variable, ops.multiply(lr, step))

    def get_config(self):
        """Returns the constructor arguments."""
        config = super().get_config()
        config.update(
            {"momentum": self.momentum, "nesterov": self.nesterov, "weight_decay": self.l2}
        )
        return config


def build_optimizer(config, model=None):
    """The run's TorchSGD from its TrainConfig (with loss scaling for mixed_float16)."""
    optimizer = TorchSGD(
        learning_rate=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
    if config.no_weight_decay_on and model is not None:
        optimizer.exclude_from_l2(no_decay_variables(model, config.no_weight_decay_on))
    if config.dtype == "mixed_float16":
        # float16 gradients underflow without dynamic loss scaling; bfloat16 does not need it.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
