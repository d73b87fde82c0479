"""The weight EMA's decay warmup, min(decay, (1 + s) / (10 + s)), and its flag."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from resnext_tf.training import TrainConfig
from resnext_tf.training.ema import WeightEMA, warmed_up_decay

# --------------------------------------------------------------------------- the schedule


@pytest.mark.parametrize(
    "step, want",
    [(0, 1 / 10), (1, 2 / 11), (10, 11 / 20), (100, 101 / 110), (890, 0.99), (10**6, 0.99)],
)
def test_warmed_up_decay(step, want):
    assert warmed_up_decay(0.99, step) == pytest.approx(want, rel=1e-15)
    assert warmed_up_decay(0.99, step, warmup=False) == 0.99


def test_warmup_reaches_the_decay_at_step_10d_minus_1_over_1_minus_d():
    for decay, first in ((0.99, 890), (0.9999, 89990)):
        assert warmed_up_decay(decay, first - 1) < decay
        assert warmed_up_decay(decay, first) == pytest.approx(decay, rel=1e-15)
        assert warmed_up_decay(decay, 10 * first) == decay


def two_models():
    models = [keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]) for _ in range(2)]
    models[0].set_weights([np.ones((2, 2), np.float32), np.zeros(2, np.float32)])
    return models


@pytest.mark.parametrize("step", [0, 1, 10, 10**6])
def test_in_graph_decay_matches_the_python_schedule(step):
    models = two_models()
    warm = WeightEMA(*models, decay=0.99, warmup=True)
    steps = tf.Variable(step, dtype=tf.int64)  # as optimizer.iterations
    got = float(tf.function(warm.decay_at)(steps))
    assert got == pytest.approx(warmed_up_decay(0.99, step), rel=1e-6)
    assert WeightEMA(*models, decay=0.99).decay_at(steps) == 0.99  # warmup off: constant


def test_update_uses_the_decay_of_the_step_and_warmup_off_the_constant():
    for warmup, want in ((True, 2 / 11), (False, 0.99)):
        models = two_models()
        average = WeightEMA(*models, decay=0.99, warmup=warmup)
        old = models[1].get_weights()
        models[0].set_weights([np.full((2, 2), 3.0, np.float32), np.ones(2, np.float32)])
        average.update(step=1)
        for got, a, w in zip(models[1].get_weights(), old, models[0].get_weights(), strict=True):
            np.testing.assert_allclose(got, want * a + (1 - want) * w, rtol=1e-6)
    with pytest.raises(ValueError, match="needs the optimizer's step; received step=None"):
        WeightEMA(*two_models(), decay=0.99, warmup=True).update()


def test_warmup_is_on_by_default():
    assert TrainConfig(dataset="cifar10", ema_decay=0.99).ema_warmup is True
