"""Tests of the keras.applications-style constructors and helpers."""

import inspect

import keras
import numpy as np
import pytest

from resnext_tf import contract
from resnext_tf.applications import (
    ResNeXt29,
    ResNeXt50,
    ResNeXt101,
    ResNeXt152,
    decode_predictions,
    preprocess_input,
)
from resnext_tf.errors import WeightsError

SMALL = dict(cardinality=2, base_width=4)


@pytest.mark.parametrize("constructor", [ResNeXt29, ResNeXt50, ResNeXt101, ResNeXt152])
def test_signature_follows_keras_applications(constructor):
    ours = list(inspect.signature(constructor).parameters)
    theirs = list(inspect.signature(keras.applications.ResNet50).parameters)
    assert ours[: len(theirs)] == theirs
    assert ours[len(theirs) :] == ["cardinality", "base_width", "kwargs"]


def test_defaults_are_the_paper_variants():
    assert inspect.signature(ResNeXt50).parameters["cardinality"].default == 32
    assert inspect.signature(ResNeXt50).parameters["base_width"].default == 4
    assert inspect.signature(ResNeXt29).parameters["cardinality"].default == 16
    assert inspect.signature(ResNeXt29).parameters["classes"].default == 10
    model = ResNeXt29(**SMALL)
    assert model.name == "resnext29_2x4d" and tuple(model.input.shape) == (None, 32, 32, 3)


def test_softmax_head_and_pooling_options():
    model = ResNeXt29(input_shape=(8, 8, 3), classes=6, **SMALL)
    probs = keras.ops.convert_to_numpy(model(np.ones((2, 8, 8, 3), "float32")))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5, atol=1e-6)
    features = ResNeXt50(include_top=False, input_shape=(64, 64, 3), **SMALL)
    assert tuple(features.output.shape) == (None, 2, 2, 2048)
    pooled = ResNeXt50(include_top=False, pooling="max", input_shape=(64, 64, 3), **SMALL)
    assert tuple(pooled.output.shape) == (None, 2048)
    flexible = ResNeXt50(include_top=False, input_shape=(None, None, 3), **SMALL)
    assert flexible(np.zeros((1, 96, 64, 3), "float32")).shape == (1, 3, 2, 2048)


def test_input_tensor():
    tensor = keras.Input((40, 40, 3))
    model = ResNeXt50(input_tensor=tensor, classes=3, **SMALL)
    assert model.inputs[0] is tensor and tuple(model.output.shape) == (None, 3)


def test_validation_errors():
    with pytest.raises(ValueError, match=r"Received: weights='cifar'"):
        ResNeXt50(weights="cifar")
    with pytest.raises(ValueError, match=r"`classes` should be 1000.*classes=10"):
        ResNeXt50(weights="imagenet", classes=10)
    with pytest.raises(ValueError, match=r"No pretrained weights.*CIFAR"):
        ResNeXt29(weights="imagenet")
    with pytest.raises(ValueError, match=r"at least 32x32"):
        ResNeXt50(input_shape=(31, 64, 3), **SMALL)
    with pytest.raises(ValueError, match=r"pooling='mean'"):
        ResNeXt50(include_top=False, pooling="mean", **SMALL)


def test_weights_file_is_loaded(tmp_path):
    source = ResNeXt29(input_shape=(8, 8, 3), **SMALL)
    source.get_layer("head").bias.assign(np.arange(10, dtype="float32"))
    path = str(tmp_path / "small.weights.h5")
    source.save_weights(path)
    loaded = ResNeXt29(input_shape=(8, 8, 3), weights=path, **SMALL)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded.get_layer("head").bias), np.arange(10)
    )


def test_preprocess_input_matches_torch_normalisation():
    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype("float32")
    ours = keras.ops.convert_to_numpy(preprocess_input(x))
    expected = (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    reference = keras.applications.imagenet_utils.preprocess_input(x.copy(), mode="torch")
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
    first = keras.ops.convert_to_numpy(preprocess_input(x.transpose(0, 3, 1, 2), "channels_first"))
    np.testing.assert_allclose(first, expected.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-6)


def test_decode_predictions_offline():
    preds = np.zeros((2, 1000), "float32")
    preds[0, [1, 999, 5]] = [0.6, 0.3, 0.1]
    preds[1, 207] = 1.0
    decoded = decode_predictions(preds, top=3)
    assert decoded[0] == [
        ("n01443537", "goldfish", pytest.approx(0.6)),
        ("n15075141", "toilet_tissue", pytest.approx(0.3)),
        ("n01496331", "electric_ray", pytest.approx(0.1)),
    ]
    assert decoded[1][0][:2] == ("n02099601", "golden_retriever")
    with pytest.raises(ValueError, match=r"\(samples, 1000\).*\(2, 10\)"):
        decode_predictions(np.zeros((2, 10)))


def test_class_index_has_sorted_wnids():
    wnids, labels = contract.imagenet_classes()
    assert len(set(wnids)) == 1000 and list(wnids) == sorted(wnids) and len(labels) == 1000


@pytest.mark.parametrize("channels", [1, 4])
def test_other_channel_counts_without_published_weights(channels):
    # keras.applications.ResNet50(weights=None, include_top=False, input_shape=(None, None, 1))
    # builds; so do ours.
    model = ResNeXt50(
        weights=None, include_top=False, input_shape=(None, None, channels), pooling="avg", **SMALL
    )
    assert tuple(model.input.shape) == (None, None, None, channels)
    assert model(np.zeros((1, 64, 64, channels), "float32")).shape == (1, 2048)
    tensor = keras.Input((32, 32, channels))
    assert ResNeXt29(input_tensor=tensor, **SMALL).inputs[0] is tensor
    assert ResNeXt29(in_channels=channels, **SMALL).input.shape[-1] == channels


@pytest.mark.parametrize("weights", ["imagenet", "torchvision_v2"])
def test_published_weights_need_three_channels(weights):
    # keras' rule (imagenet_utils.obtain_input_shape): weights='imagenet' needs 3 channels.
    with pytest.raises(WeightsError, match=r"must have 3 channels.*received 1 input channels"):
        ResNeXt50(weights=weights, include_top=False, input_shape=(None, None, 1))
    with pytest.raises(WeightsError, match=r"received 4 input channels"):
        ResNeXt50(weights=weights, input_tensor=keras.Input((64, 64, 4)))
    with pytest.raises(WeightsError, match=r"received 2 input channels"):
        ResNeXt50(weights=weights, in_channels=2)


def test_rgb_weights_file_into_a_grey_model(tmp_path):
    source = ResNeXt29(input_shape=(8, 8, 3), **SMALL)
    path = str(tmp_path / "rgb.weights.h5")
    source.save_weights(path)
    grey = ResNeXt29(input_shape=(8, 8, 1), weights=path, **SMALL)
    rgb_kernel = keras.ops.convert_to_numpy(source.get_layer("stem_conv").kernel)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(grey.get_layer("stem_conv").kernel),
        rgb_kernel.sum(axis=2, keepdims=True),
        rtol=1e-6,
    )
