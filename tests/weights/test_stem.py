"""RGB weights into models with 1, 2, 4, 6 or 7 input channels: timm's stem rule, every loader."""

import logging

import keras
import numpy as np
import pytest
import torch_files

import resnext_tf
from resnext_tf.errors import WeightsError
from resnext_tf.weights import load_weights
from resnext_tf.weights.state_dict import CONV_TO_KERAS
from resnext_tf.weights.stem import adapt_input_kernel, adapt_state_dict

SIZE = 16
CIFAR_PLANES, TINY_BLOCKS = (64, 128, 256), (1, 1, 1)


def tiny(in_channels, num_classes=10):
    """A depth-11 CIFAR ResNeXt 2x4d (one block a stage)."""
    return resnext_tf.build_resnext(
        11,
        cardinality=2,
        base_width=4,
        stem="cifar",
        num_classes=num_classes,
        input_shape=(SIZE, SIZE, in_channels),
    )


def randomize(model, seed):
    """Random weights and BN statistics, so that a copied value cannot pass for the init."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if "moving_variance" in v.path or "gamma" in v.path:
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
        else:
            v.assign(rng.normal(0.0, 0.1, v.shape).astype("float32"))
    return model


def expected_kernel(rgb, in_channels):
    """timm's adapt_input_conv written out per case on a Keras (kh, kw, in, out) kernel."""
    r, g, b = rgb[:, :, 0:1], rgb[:, :, 1:2], rgb[:, :, 2:3]
    if in_channels == 1:
        return r + g + b
    cycle = [r, g, b] * 3
    return np.concatenate(cycle[:in_channels], axis=2) * (3.0 / in_channels)


def stem_kernel(model):
    return keras.ops.convert_to_numpy(model.get_layer("stem_conv").kernel)


def outputs(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


@pytest.mark.parametrize("in_channels", [1, 2, 4, 6, 7])
def test_adapt_input_kernel_matches_numpy(in_channels):
    rgb = np.random.default_rng(0).normal(size=(7, 7, 3, 64)).astype(np.float32)
    adapted = adapt_input_kernel(rgb, in_channels)
    assert adapted.shape == (7, 7, in_channels, 64) and adapted.dtype == np.float32
    np.testing.assert_allclose(adapted, expected_kernel(rgb, in_channels), rtol=1e-6)
    # Torch layout (out, in, kh, kw) gives the same kernel.
    torch_layout = adapt_input_kernel(rgb.transpose(3, 2, 0, 1), in_channels, axis=1)
    np.testing.assert_allclose(torch_layout.transpose(CONV_TO_KERAS), adapted, rtol=1e-6)


def test_adapt_input_kernel_keeps_matching_and_refuses_non_rgb():
    rgb = np.ones((3, 3, 3, 8), np.float32)
    assert adapt_input_kernel(rgb, 3) is rgb
    grey = np.ones((3, 3, 1, 8), np.float32)
    with pytest.raises(WeightsError, match=r"1 input channels to in_channels=3"):
        adapt_input_kernel(grey, 3)
    with pytest.raises(WeightsError, match=r"4 input channels to in_channels=1"):
        adapt_input_kernel(np.ones((3, 3, 4, 8), np.float32), 1)


def test_state_dict_of_the_same_channels_is_not_copied():
    model = tiny(3)
    state = {"conv1.weight": np.zeros((64, 3, 3, 3), np.float32)}
    assert adapt_state_dict(model, state) is state


@pytest.fixture(scope="module")
def rgb_weights(tmp_path_factory):
    """(path of a 3-channel model's .weights.h5, that model)."""
    keras.utils.set_random_seed(0)
    source = randomize(tiny(3), seed=1)
    path = str(tmp_path_factory.mktemp("rgb") / "tiny.weights.h5")
    source.save_weights(path)
    return path, source


def check_loaded(model, source, in_channels):
    """Stem adapted, every other variable copied unchanged."""
    np.testing.assert_allclose(
        stem_kernel(model), expected_kernel(stem_kernel(source), in_channels), rtol=1e-6
    )
    stem = model.get_layer("stem_conv").kernel.path
    for target, value in zip(model.weights, source.weights, strict=True):
        if target.path != stem:
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(target), keras.ops.convert_to_numpy(value)
            )


@pytest.mark.parametrize("in_channels", [1, 3, 4])
def test_keras_weights_file_into_other_channel_counts(rgb_weights, in_channels, caplog):
    path, source = rgb_weights
    model = tiny(in_channels)
    with caplog.at_level(logging.INFO, logger="resnext_tf.weights.stem"):
        load_weights(model, path)
    check_loaded(model, source, in_channels)
    adapted = [r for r in caplog.records if "Adapted the stem kernel" in r.getMessage()]
    assert len(adapted) == (in_channels != 3)
    if in_channels != 3:
        assert f"from 3 to {in_channels} input channels" in adapted[0].getMessage()


def test_grey_model_on_a_grey_image_equals_the_rgb_model(rgb_weights):
    path, source = rgb_weights
    grey = tiny(1)
    load_weights(grey, path)
    x = np.random.default_rng(2).normal(size=(2, SIZE, SIZE, 1)).astype(np.float32)
    np.testing.assert_allclose(
        outputs(grey, x), outputs(source, np.repeat(x, 3, axis=-1)), rtol=1e-4, atol=1e-5
    )


def test_six_channels_of_a_repeated_image_equal_the_rgb_model(rgb_weights):
    # Repeated twice and scaled by 3/6, the kernel sees (x, x) as the RGB kernel saw x.
    path, source = rgb_weights
    model = tiny(6)
    load_weights(model, path)
    x = np.random.default_rng(3).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(
        outputs(model, np.concatenate([x, x], axis=-1)), outputs(source, x), rtol=1e-4, atol=1e-5
    )


def test_keras_archive_into_a_grey_model(rgb_weights, tmp_path):
    _, source = rgb_weights
    path = str(tmp_path / "tiny.keras")
    source.save(path)
    model = tiny(1)
    load_weights(model, path)
    check_loaded(model, source, 1)


def test_grey_weights_into_an_rgb_model_are_refused(tmp_path):
    path = str(tmp_path / "grey.weights.h5")
    tiny(1).save_weights(path)
    with pytest.raises(WeightsError, match=r"1 input channels\) to the model's 3"):
        load_weights(tiny(3), path)
    loaded = tiny(1)
    load_weights(loaded, path)  # the same count loads as it is


@pytest.mark.parametrize("in_channels", [1, 4])
def test_torch_state_dict_into_other_channel_counts(tmp_path, monkeypatch, in_channels, caplog):
    import safetensors.numpy as safetensors  # the test extra installs it

    monkeypatch.setenv("RESNEXT_TF_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(4)
    state = torch_files.random_state_dict(rng, CIFAR_PLANES, TINY_BLOCKS, 2, 4, 3, 10)
    state = {k: np.asarray(v, np.float32) for k, v in state.items()}
    path = str(tmp_path / "tiny.safetensors")
    safetensors.save_file(state, path)
    model = tiny(in_channels)
    with caplog.at_level(logging.INFO, logger="resnext_tf.weights.stem"):
        load_weights(model, path)
    rgb = state["conv1.weight"].transpose(CONV_TO_KERAS)
    np.testing.assert_allclose(stem_kernel(model), expected_kernel(rgb, in_channels), rtol=1e-6)
    assert any("Adapted the stem kernel" in r.getMessage() for r in caplog.records)
    # The converted file is cached for this layout; loading it again gives the same kernel.
    again = tiny(in_channels)
    load_weights(again, path)
    np.testing.assert_array_equal(stem_kernel(again), stem_kernel(model))
