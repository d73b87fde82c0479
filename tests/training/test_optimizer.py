"""TorchSGD against a hand computation of Torch's optim.sgd update (numpy), also with variables
excluded from weight decay, the per-step schedule and the weight EMA."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import train_helpers

from resnext_tf.recipes import recipe
from resnext_tf.training import schedules
from resnext_tf.training.ema import WeightEMA
from resnext_tf.training.optimizer import TorchSGD, no_decay_variables

W0 = np.array([[0.5, -1.0], [2.0, 0.25]], np.float32)
GRADS = (
    np.array([[0.1, 0.2], [-0.3, 0.4]], np.float32),
    np.array([[-0.2, 0.05], [0.1, -0.6]], np.float32),
)
LRS = (0.1, 0.01)  # the second step follows an LR change (x0.1, as the schedules do)
MOMENTUM, WD = 0.9, 5e-4


def torch_sgd_reference(nesterov):
    """Torch's rule, written out: g += wd*w; v = m*v + g; w -= lr*(g + m*v) (or lr*v)."""
    w, v, out = W0.astype(np.float64), np.zeros_like(W0, np.float64), []
    for grad, lr in zip(GRADS, LRS, strict=True):
        g = grad + WD * w
        v = MOMENTUM * v + g
        w = w - lr * (g + MOMENTUM * v if nesterov else v)
        out.append(w)
    return out


def run_torch_sgd(nesterov):
    variable = keras.Variable(W0)
    optimizer = TorchSGD(LRS[0], momentum=MOMENTUM, nesterov=nesterov, weight_decay=WD)
    out = []
    for grad, lr in zip(GRADS, LRS, strict=True):
        optimizer.learning_rate = lr
        optimizer.apply([keras.ops.convert_to_tensor(grad)], [variable])
        out.append(keras.ops.convert_to_numpy(variable))
    return out


@pytest.mark.parametrize("nesterov", [True, False])
def test_one_and_two_steps_match_torch(nesterov):
    for got, want in zip(run_torch_sgd(nesterov), torch_sgd_reference(nesterov), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_pinned_first_step():
    # w1 = w0 - lr * (1 + m) * (g + wd * w0) for Nesterov from a zero velocity.
    got = run_torch_sgd(True)[0][0, 0]
    assert got == pytest.approx(0.5 - 0.1 * 1.9 * (0.1 + 5e-4 * 0.5), rel=1e-6)


def test_differs_from_keras_sgd_after_lr_change():
    # Keras folds the LR into the velocity; after the LR change the two rules part ways.
    variable = keras.Variable(W0)
    optimizer = keras.optimizers.SGD(LRS[0], momentum=MOMENTUM, nesterov=True)
    for grad, lr in zip(GRADS, LRS, strict=True):
        optimizer.learning_rate = lr
        optimizer.apply(
            [keras.ops.convert_to_tensor(grad + WD * keras.ops.convert_to_numpy(variable))],
            [variable],
        )
    assert not np.allclose(keras.ops.convert_to_numpy(variable), torch_sgd_reference(True)[1])


def test_velocity_is_tracked_and_config_round_trips():
    optimizer = TorchSGD(0.2, momentum=0.8, nesterov=False, weight_decay=1e-3)
    optimizer.build([keras.Variable(W0)])
    assert len(optimizer.velocities) == 1
    clone = TorchSGD.from_config(optimizer.get_config())
    assert (clone.momentum, clone.nesterov, clone.l2) == (0.8, False, 1e-3)
    assert clone.weight_decay is None  # the decoupled Keras decay stays off


@pytest.mark.parametrize(
    "kwargs, bad",
    [({"momentum": 1.0}, "momentum=1.0"), ({"weight_decay": -1.0}, "weight_decay=-1.0")],
)
def test_bad_values_are_named(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        TorchSGD(0.1, **kwargs)


JAX_SCRIPT = """
import sys
import keras, numpy as np
from resnext_tf.training.optimizer import TorchSGD
v = keras.Variable(np.array({w0}, np.float32))
opt = TorchSGD({lr0}, momentum={m}, nesterov=True, weight_decay={wd})
for g, lr in zip({grads}, {lrs}):
    opt.learning_rate = lr
    opt.apply([keras.ops.convert_to_tensor(np.array(g, np.float32))], [v])
print(keras.backend.backend(), "tensorflow" in sys.modules, repr(np.asarray(v).tolist()))
"""


def test_runs_on_jax_without_tensorflow():
    script = JAX_SCRIPT.format(
        w0=W0.tolist(),
        lr0=LRS[0],
        m=MOMENTUM,
        wd=WD,
        grads=[g.tolist() for g in GRADS],
        lrs=list(LRS),
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=train_helpers.script_env(KERAS_BACKEND="jax"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    backend, imported_tf, values = proc.stdout.strip().splitlines()[-1].split(" ", 2)
    assert (backend, imported_tf) == ("jax", "False")
    np.testing.assert_allclose(np.array(eval(values)), torch_sgd_reference(True)[1], rtol=1e-6)


def test_weight_decay_exclusion_matches_torch_without_the_l2_term():
    # Torch's rule for the decayed variable; the same rule with weight_decay = 0 for the other.
    kernel, bias = keras.Variable(W0), keras.Variable(W0[0])
    optimizer = TorchSGD(LRS[0], momentum=MOMENTUM, nesterov=True, weight_decay=WD)
    optimizer.exclude_from_l2([bias])
    v_b, b = np.zeros(2), W0[0].astype(np.float64)
    for grad, lr in zip(GRADS, LRS, strict=True):
        optimizer.learning_rate = lr
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in (grad, grad[0])], [kernel, bias])
        v_b = MOMENTUM * v_b + grad[0]
        b = b - lr * (grad[0] + MOMENTUM * v_b)
    np.testing.assert_allclose(kernel.numpy(), torch_sgd_reference(True)[1], rtol=1e-6)
    np.testing.assert_allclose(bias.numpy(), b, rtol=1e-6, atol=1e-7)


def test_without_exclusions_the_update_is_bit_identical():
    plain, masked = keras.Variable(W0), keras.Variable(W0)
    optimizers = [TorchSGD(LRS[0], weight_decay=WD) for _ in range(2)]
    optimizers[1].exclude_from_l2([])
    for grad, lr in zip(GRADS, LRS, strict=True):
        for optimizer, variable in zip(optimizers, (plain, masked), strict=True):
            optimizer.learning_rate = lr
            optimizer.apply([keras.ops.convert_to_tensor(grad)], [variable])
    np.testing.assert_array_equal(plain.numpy(), masked.numpy())


def test_exclusions_are_fixed_once_built():
    optimizer = TorchSGD(0.1)
    optimizer.build([keras.Variable(W0)])
    with pytest.raises(ValueError, match="before the optimizer is built"):
        optimizer.exclude_from_l2([])


def hand_lr(step, base, warmup, total):
    """Warmup to `base` over `warmup` steps, then cosine to zero at `total` (written out)."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + np.cos(np.pi * (step - warmup) / (total - warmup)))


def test_per_step_lr_weight_decay_exclusion_and_ema_match_numpy():
    """Six steps of the trainer's update, by hand: scheduled LR (1 warmup epoch of 3 steps, then
    cosine), Torch SGD with L2 on the kernel only (--no_weight_decay_on=bias), EMA of both."""
    steps, decay, base = 6, 0.9, 0.4
    schedule = schedules.StepSchedule(base, recipe("cifar10"), 2, 3, "cosine", warmup_epochs=1)
    models = [keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]) for _ in range(2)]
    models[0].set_weights([W0, W0[1]])
    average = WeightEMA(models[0], models[1], decay)
    optimizer = TorchSGD(base, momentum=MOMENTUM, nesterov=True, weight_decay=WD)
    optimizer.exclude_from_l2(no_decay_variables(models[0], ["bias"]))
    grads = np.random.default_rng(0).normal(size=(steps, 3, 2)).astype(np.float32)

    w = [W0.astype(np.float64), W0[1].astype(np.float64)]
    v = [np.zeros_like(x) for x in w]
    e = [x.astype(np.float32) for x in w]
    for step in range(steps):
        lr = schedule(step)
        assert lr == pytest.approx(hand_lr(step, base, 3, 6), rel=1e-12)
        optimizer.learning_rate = lr
        optimizer.apply(
            [keras.ops.convert_to_tensor(g) for g in (grads[step, :2], grads[step, 2])],
            models[0].trainable_variables,
        )
        average.update()
        for i, (grad, l2) in enumerate(((grads[step, :2], WD), (grads[step, 2], 0.0))):
            g = grad + l2 * w[i]
            v[i] = MOMENTUM * v[i] + g
            w[i] = w[i] - lr * (g + MOMENTUM * v[i])
            e[i] = np.float32(decay) * e[i] + np.float32(1 - decay) * w[i].astype(np.float32)
    for got, want in zip(models[0].get_weights(), w, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    for got, want in zip(models[1].get_weights(), e, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
