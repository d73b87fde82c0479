"""Pieces of the trainer that need no data set: ten-crop logits, optimizer wrapping, digest,
label smoothing, weight-decay exclusions and the default update, the weight EMA."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from resnext_tf.training import TrainConfig, losses, modeling, optimizer, run_log, trainer
from resnext_tf.training.ema import WeightEMA
from resnext_tf.training.optimizer import TorchSGD, no_decay_variables


def test_ten_crop_is_the_mean_of_the_logits_of_every_crop():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(5)]
    )
    images = np.random.default_rng(0).normal(size=(2, 10, 4, 4, 3)).astype(np.float32)
    got = trainer.eval_logits(model, images, ten_crop=True).numpy()
    want = [
        np.mean([model(images[b, c : c + 1]).numpy()[0] for c in range(10)], axis=0)
        for b in range(2)
    ]
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-5)


def test_float16_gets_dynamic_loss_scaling():
    plain = optimizer.build_optimizer(TrainConfig(dataset="cifar10", dtype="mixed_bfloat16"))
    scaled = optimizer.build_optimizer(TrainConfig(dataset="cifar10", dtype="mixed_float16"))
    assert isinstance(plain, TorchSGD)
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)
    assert isinstance(scaled.inner_optimizer, TorchSGD)
    assert scaled.inner_optimizer.l2 == 5e-4


def test_weights_digest_sees_every_bit():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    before = run_log.weights_digest(model)
    kernel = model.weights[0]
    values = keras.ops.convert_to_numpy(kernel).copy()
    values.view(np.uint32)[0, 0] ^= 1  # flip the lowest mantissa bit
    kernel.assign(values)
    assert run_log.weights_digest(model) != before


TINY = dict(dataset="cifar10", depth=11, cardinality=2, base_width=4, shortcut_type="A")


def test_label_smoothing_loss_matches_the_smoothed_target():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 10)).astype(np.float32)
    labels = np.array([0, 3, 9, 3], np.int32)
    plain = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits).numpy()
    np.testing.assert_array_equal(losses.cross_entropy(labels, logits).numpy(), plain)
    eps = 0.1
    target = np.full((4, 10), eps / 10) + (1 - eps) * np.eye(10)[labels]
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = -(target * log_p).sum(-1)
    np.testing.assert_allclose(losses.cross_entropy(labels, logits, eps).numpy(), want, rtol=1e-5)
    keras_loss = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=eps, reduction=None
    )
    np.testing.assert_allclose(want, keras_loss(np.eye(10)[labels], logits), rtol=1e-5)


def test_no_decay_kinds_pick_batchnorm_and_bias_variables():
    config = TrainConfig(**TINY)
    model = modeling.build_model(config, (32, 32, 3), 10)
    bns = [v for v in model.trainable_variables if v.name in ("gamma", "beta")]
    assert len(bns) == 2 * 10  # the stem's and 3 per block x 3 blocks (shortcut A has none)
    assert no_decay_variables(model, ["bn"]) == bns
    assert [v.path for v in no_decay_variables(model, ["bias"])] == ["head/bias"]
    assert len(no_decay_variables(model, ["bn", "bias"])) == len(bns) + 1
    with pytest.raises(ValueError, match="received 'gamma'; expected a subset of"):
        no_decay_variables(model, ["gamma"])


def one_step(config, weights, grads):
    model = modeling.build_model(config, (32, 32, 3), 10)
    model.set_weights(weights)
    sgd = optimizer.build_optimizer(config, model)
    sgd.apply(grads, model.trainable_variables)
    return model


def test_default_optimizer_update_is_the_original_and_exclusions_spare_batchnorm():
    keras.utils.set_random_seed(0)
    config = TrainConfig(**TINY)
    reference = modeling.build_model(config, (32, 32, 3), 10)
    rng = np.random.default_rng(0)
    # Moved off the initial values, so that no variable is zero (where L2 adds nothing).
    weights = [
        w + rng.uniform(0.1, 0.2, w.shape).astype(np.float32) for w in reference.get_weights()
    ]
    reference.set_weights(weights)
    grads = [rng.normal(size=v.shape).astype(np.float32) for v in reference.trainable_variables]
    # The optimizer as the trainer built it before the new options.
    TorchSGD(config.lr, config.momentum, config.nesterov, config.weight_decay).apply(
        grads, reference.trainable_variables
    )
    default = one_step(config, weights, grads)
    for a, b in zip(reference.weights, default.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    spared = one_step(TrainConfig(**TINY, no_weight_decay_on=("bn",)), weights, grads)
    for a, b in zip(reference.weights, spared.weights, strict=True):
        if a.name in ("gamma", "beta"):  # lr * (1 + m) * wd * w apart: no L2 term is added
            assert not np.array_equal(a.numpy(), b.numpy()), a.path
        else:
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_weight_ema_averages_batchnorm_statistics_too():
    models = [
        keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(momentum=0.5)])
        for _ in range(2)
    ]
    average = WeightEMA(models[0], models[1], decay=0.75)
    before = [w.copy() for w in models[0].get_weights()]
    assert all(np.array_equal(a, b) for a, b in zip(models[1].get_weights(), before, strict=True))
    models[0](np.arange(12, dtype=np.float32).reshape(4, 3), training=True)  # moves the stats
    average.update()
    after = models[0].get_weights()
    for got, old, new in zip(models[1].get_weights(), before, after, strict=True):
        np.testing.assert_allclose(got, 0.75 * old + 0.25 * new, rtol=1e-6)
    assert not np.array_equal(after[2], before[2])  # the moving mean did move
    with pytest.raises(ValueError, match="ema_decay=1.0"):
        WeightEMA(models[0], models[1], decay=1.0)
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="expected the same architecture"):
        WeightEMA(models[0], other, decay=0.5)
