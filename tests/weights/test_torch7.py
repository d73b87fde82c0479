"""Original Torch7 (.t7) models: the tree walk into torchvision names and loading into Keras."""

import numpy as np
import pytest
import torch_files
from torch_files import Obj

import resnext_tf
from resnext_tf.weights import assign_state_dict, load_weights, read_t7

# A tiny CIFAR ResNeXt of models/resnext.lua: depth 11 (one block a stage), 2x4d.
BLOCKS, CARDINALITY, BASE_WIDTH, CLASSES = (1, 1, 1), 2, 4, 10


@pytest.fixture(scope="module")
def state():
    rng = np.random.default_rng(7)
    return torch_files.random_state_dict(
        rng, (64, 128, 256), BLOCKS, CARDINALITY, BASE_WIDTH, 3, CLASSES
    )


def tiny_model():
    return resnext_tf.build_resnext(
        11, cardinality=CARDINALITY, base_width=BASE_WIDTH, stem="cifar", num_classes=CLASSES
    )


def write(tmp_path, tree, name="model.t7"):
    path = tmp_path / name
    torch_files.write_t7(path, tree)
    return path


@pytest.mark.parametrize("form", ["C", "B"])
def test_t7_tree_becomes_the_torchvision_state_dict(tmp_path, state, form):
    # Form B's parallel branches are stacked into the grouped weights of form C.
    path = write(tmp_path, torch_files.cifar_model(state, BLOCKS, CARDINALITY, form))
    converted = read_t7(path)
    assert sorted(converted) == sorted(state)
    for name, value in state.items():
        np.testing.assert_array_equal(converted[name], value, err_msg=name)


def test_t7_loads_the_same_weights_as_the_state_dict(tmp_path, state, monkeypatch):
    monkeypatch.setenv("RESNEXT_TF_CACHE", str(tmp_path / "cache"))
    path = write(tmp_path, torch_files.cifar_model(state, BLOCKS, CARDINALITY))
    from_t7, from_state = tiny_model(), tiny_model()
    load_weights(from_t7, str(path))
    assign_state_dict(from_state, state)
    for a, b in zip(from_t7.weights, from_state.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(from_t7(x, training=False), from_state(x, training=False))
    # The conversion was cached as .weights.h5 and is reused.
    assert len(list((tmp_path / "cache" / "converted").glob("model-*.weights.h5"))) == 1


def test_legacy_running_std_and_other_eps(tmp_path, state):
    # nn before mid-2016 kept running_std = 1 / sqrt(var + eps); eps may differ from 1e-5.
    eps = 1e-3
    tree = torch_files.cifar_model(state, BLOCKS, CARDINALITY)
    stem_bn = tree.fields["modules"][1]
    var = stem_bn.fields.pop("running_var")
    stem_bn.fields.update(running_std=1 / np.sqrt(var + eps), eps=eps)
    converted = read_t7(write(tmp_path, tree))
    # Under resnext_tf's epsilon 1e-5 the normaliser sqrt(var + eps) is unchanged.
    np.testing.assert_allclose(converted["bn1.running_var"] + 1e-5, var + eps, rtol=1e-6)


def test_unexpected_shortcut_is_named(tmp_path, state):
    tree = torch_files.cifar_model(state, BLOCKS, CARDINALITY)
    stage1 = tree.fields["modules"][3]
    shortcut = stage1.fields["modules"][0].fields["modules"][0].fields["modules"][1]
    shortcut.fields["modules"].append(torch_files.conv(np.ones((256, 256, 1, 1), np.float32)))
    with pytest.raises(ValueError, match=r"projection shortcut \[conv, BN\] at model\.4\.1\.1\.2"):
        read_t7(write(tmp_path, tree))


def test_hidden_parameters_are_reported(tmp_path, state):
    tree = torch_files.cifar_model(state, BLOCKS, CARDINALITY)
    hidden = Obj("nn.Concat", modules=[torch_files.conv(np.ones((4, 4, 1, 1), np.float32))])
    tree.fields["modules"].insert(3, hidden)
    with pytest.raises(ValueError, match=r"SpatialConvolution at model\.4\.1 holds parameters"):
        read_t7(write(tmp_path, tree))


def test_unexpected_structure_is_named(tmp_path, state):
    tree = torch_files.cifar_model(state, BLOCKS, CARDINALITY)
    tree.fields["modules"].insert(2, Obj("nn.SpatialDilatedConvolution"))
    with pytest.raises(ValueError, match=r"Unexpected Torch7 module SpatialDilatedConvolution"):
        read_t7(write(tmp_path, tree))


def test_non_zero_conv_bias_is_refused(tmp_path, state):
    tree = torch_files.cifar_model(state, BLOCKS, CARDINALITY)
    tree.fields["modules"][0].fields["bias"] = np.ones(64, np.float32)
    with pytest.raises(ValueError, match=r"model\.1 has a non-zero bias"):
        read_t7(write(tmp_path, tree))
