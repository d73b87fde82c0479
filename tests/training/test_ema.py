"""The weight EMA's decay warmup, min(decay, (1 + s) / (10 + s)), its flags, and the log lines
that name the weights standing for a run."""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from resnext_tf.training import TrainConfig, metrics
from resnext_tf.training.ema import WeightEMA, warmed_up_decay
from resnext_tf.training.trainer import Trainer

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


# ------------------------------------------------------------------------ flags and lines


def test_warmup_is_on_and_the_ema_stands_for_the_run_by_default():
    config = TrainConfig(dataset="cifar10", ema_decay=0.99)
    assert (config.ema_warmup, config.export_weights) == (True, "ema")
    with pytest.raises(ValueError, match=r"received export_weights='best'"):
        TrainConfig(dataset="cifar10", export_weights="best")


def fake_trainer(export_weights="ema", test_only=False, retrain=None, ema=True):
    """What Trainer's result properties read, without data or models."""
    config = types.SimpleNamespace(
        export_weights=export_weights, test_only=test_only, retrain=retrain
    )
    return types.SimpleNamespace(config=config, ema=object() if ema else None)


@pytest.mark.parametrize(
    "kwargs, want",
    [
        ({}, True),
        ({"export_weights": "raw"}, False),
        ({"ema": False}, False),
        ({"test_only": True, "retrain": "weights.h5"}, False),  # a weights file has no EMA
        ({"retrain": "weights.h5"}, True),  # trained on from those weights: the EMA is real
    ],
)
def test_result_is_ema(kwargs, want):
    assert Trainer.result_is_ema.fget(fake_trainer(**kwargs)) is want


def errors(top1):
    return metrics.Errors(loss=1.0, top1=top1, top5=0.0, count=100)


def test_one_line_when_the_ema_validates_worse(capsys):
    line = (
        " * The weight EMA validates worse than the raw weights (top1 error 78.000 vs 0.000): "
        "--export_weights=raw exports the raw weights (with --test_only --export_dir, from this "
        "run's checkpoint)\n"
    )
    worse, same = (errors(0.0), errors(78.0)), (errors(3.0), errors(3.0))
    cases = [((True,), worse, line), ((True,), same, ""), ((False,), worse, "")]
    for (is_ema,), (raw, averaged), want in cases:
        Trainer._say_if_ema_worse(types.SimpleNamespace(result_is_ema=is_ema), raw, averaged)
        assert capsys.readouterr().out == want
