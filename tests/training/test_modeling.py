"""--retrain sources (.weights.h5, .keras, our checkpoints) and --reset_classifier."""

import dataclasses

import keras
import numpy as np
import pytest

from resnext_tf import checkpoints, runs
from resnext_tf.training import TrainConfig, checkpoint, modeling

CONFIG = TrainConfig(dataset="cifar10", depth=11, cardinality=2, base_width=4, shortcut_type="A")
SHAPE = (32, 32, 3)


def build(num_classes, seed):
    keras.utils.set_random_seed(seed)
    return modeling.build_model(CONFIG, SHAPE, num_classes)


def assert_layers_equal(a, b, skip=()):
    for layer in a.layers:
        if layer.name in skip:
            continue
        for x, y in zip(layer.get_weights(), b.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 10-class model saved in every format --retrain reads."""
    model = build(10, seed=1)
    root = tmp_path_factory.mktemp("weights")
    model.save_weights(str(root / "m.weights.h5"))
    model.save(str(root / "m.keras"))
    manager = checkpoint.CheckpointManager(str(root / "run"), {"model": model})
    manager.save(checkpoints.epoch_name(1), {"num_classes": 10})
    return model, root


@pytest.mark.parametrize("name", ["m.weights.h5", "m.keras", "run"])
def test_load_weights_from_each_format(source, name):
    model, root = source
    target = build(10, seed=2)
    runs.load_run_or_weights(target, str(root / name))
    assert_layers_equal(model, target)


@pytest.mark.parametrize("name", ["m.weights.h5", "m.keras", "run"])
def test_reset_classifier_keeps_the_body_and_resizes_the_head(source, name):
    model, root = source
    target = build(7, seed=2)
    fresh_head = target.get_layer("head").get_weights()
    modeling.initialise_from(target, str(root / name), True, lambda n: build(n, seed=3))
    assert_layers_equal(model, target, skip=("head",))
    kernel, bias = target.get_layer("head").get_weights()
    assert kernel.shape == (1024, 7)
    np.testing.assert_array_equal(kernel, fresh_head[0])
    np.testing.assert_array_equal(bias, np.zeros(7))


def test_source_num_classes(source):
    _, root = source
    assert runs.source_num_classes(str(root / "m.weights.h5"), default=3) == 10
    assert runs.source_num_classes(str(root / "run"), default=3) == 10
    assert runs.source_num_classes(str(root / "m.keras"), default=3) == 3


def test_unknown_format_is_named(tmp_path):
    path = tmp_path / "model.t7"
    path.write_bytes(b"torch")
    with pytest.raises(ValueError, match=r"model\.t7"):
        runs.load_run_or_weights(build(10, seed=1), str(path))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="nothing.h5"):
        runs.load_run_or_weights(build(10, seed=1), str(tmp_path / "nothing.h5"))


def test_torch_files_go_to_the_converter_which_skips_the_head(tmp_path, monkeypatch):
    calls = []

    class FakeConverter:
        @staticmethod
        def load_weights(model, path, skip_classifier=False):
            calls.append((path, skip_classifier))

    monkeypatch.setattr(modeling, "weights", FakeConverter)
    monkeypatch.setattr(runs, "weights", FakeConverter)
    model, path = build(7, seed=1), str(tmp_path / "resnext.pth")
    runs.load_run_or_weights(model, path)
    modeling.initialise_from(model, path, True, build_source=None)
    assert calls == [(path, False), (path, True)]


@pytest.mark.parametrize("zero", [False, True])
def test_zero_init_residual_flag_reaches_the_model(zero):
    config = dataclasses.replace(CONFIG, zero_init_residual=zero)
    model = modeling.build_model(config, SHAPE, 10)
    gammas = [block.bn3.gamma.numpy() for block in model.layers if hasattr(block, "bn3")]
    assert len(gammas) == 3  # depth 11: one block per stage
    for gamma in gammas:
        np.testing.assert_array_equal(gamma, 0.0 if zero else 1.0)
