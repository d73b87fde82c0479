"""Pieces of the trainer that need no data set: ten-crop logits, optimizer wrapping, digest."""

import keras
import numpy as np

from resnext_tf.training import TrainConfig, trainer
from resnext_tf.training.optimizer import TorchSGD


def test_ten_crop_sums_the_logits_of_every_crop():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(5)]
    )
    images = np.random.default_rng(0).normal(size=(2, 10, 4, 4, 3)).astype(np.float32)
    got = trainer.eval_logits(model, images, ten_crop=True).numpy()
    want = [sum(model(images[b, c : c + 1]).numpy()[0] for c in range(10)) for b in range(2)]
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-5)


def test_float16_gets_dynamic_loss_scaling():
    plain = trainer._build_optimizer(TrainConfig(dataset="cifar10", dtype="mixed_bfloat16"))
    scaled = trainer._build_optimizer(TrainConfig(dataset="cifar10", dtype="mixed_float16"))
    assert isinstance(plain, TorchSGD)
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)
    assert isinstance(scaled.inner_optimizer, TorchSGD)
    assert scaled.inner_optimizer.l2 == 5e-4


def test_weights_digest_sees_every_bit():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    before = trainer.weights_digest(model)
    kernel = model.weights[0]
    values = keras.ops.convert_to_numpy(kernel).copy()
    values.view(np.uint32)[0, 0] ^= 1  # flip the lowest mantissa bit
    kernel.assign(values)
    assert trainer.weights_digest(model) != before
