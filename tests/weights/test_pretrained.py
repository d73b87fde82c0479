"""Known weight names, verified downloads into the cache, offline errors, and the convert CLI."""

import hashlib
import os

import numpy as np
import pytest
import torch_files

import resnext_tf
from resnext_tf.applications import ResNeXt50
from resnext_tf.errors import WeightsError
from resnext_tf.weights import (
    architecture_name,
    convert_weights,
    list_pretrained,
    load_weights,
    pretrained,
    resolve_weights,
)
from resnext_tf.weights.convert import main as convert_main
from resnext_tf.weights.pretrained import Pretrained


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNEXT_TF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_imagenet_means_torchvision_v1_for_resnext50():
    entry = pretrained.lookup("imagenet", "resnext50_32x4d")
    # torchvision/models/resnet.py, ResNeXt50_32X4D_Weights.IMAGENET1K_V1.
    assert entry.url == "https://download.pytorch.org/models/resnext50_32x4d-7cdf4587.pth"
    assert entry.sha256_prefix == "7cdf4587"
    assert entry.licence.startswith("BSD-3-Clause")
    assert list_pretrained("resnext50_32x4d")[:3] == ["imagenet", "fb_ssl", "fb_swsl"]
    assert pretrained.lookup("torchvision_v2", "resnext50_32x4d").sha256_prefix == "1a0047aa"


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"resnext29_8x64d; received weights='imagenet'.*\[\]"):
        resolve_weights("imagenet", "resnext29_8x64d")
    with pytest.raises(ValueError, match=r"'torchvision_v1', 'torchvision_v2'"):
        resolve_weights("torchvision_v3", "resnext101_32x8d")


def test_paths_pass_through(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"x")
    assert resolve_weights(str(path), "resnext50_32x4d") == str(path)
    assert resolve_weights(None, "resnext50_32x4d") is None


def fake_entry(content, tmp_path):
    """A published-looking entry whose file name carries the content's sha256 prefix."""
    prefix = hashlib.sha256(content).hexdigest()[:8]
    # Port 9 of the loopback (discard) refuses connections: every download attempt fails.
    return Pretrained(f"http://127.0.0.1:9/fake-{prefix}.pth", "test licence", "test")


def test_cached_file_with_matching_hash_is_used_offline(tmp_path):
    entry = fake_entry(b"weights", tmp_path)
    target = os.path.join(pretrained.cache_dir("downloads"), entry.filename)
    with open(target, "wb") as f:
        f.write(b"weights")
    assert pretrained.fetch(entry) == target


def test_cached_file_with_wrong_hash_is_removed(tmp_path):
    entry = fake_entry(b"weights", tmp_path)
    target = os.path.join(pretrained.cache_dir("downloads"), entry.filename)
    with open(target, "wb") as f:
        f.write(b"tampered")
    with pytest.raises(ValueError, match="does not match its published SHA-256 prefix"):
        pretrained.fetch(entry)
    assert not os.path.exists(target)


def test_offline_error_says_what_to_fetch_and_where(tmp_path):
    entry = fake_entry(b"weights", tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        pretrained.fetch(entry)
    message = str(error.value)
    assert entry.url in message
    assert os.path.join(pretrained.cache_dir("downloads"), entry.filename) in message
    assert "test licence" in message


def test_torch7_originals_are_never_used_unverified(cache):
    # Not downloaded, and not used by name even when a file of that name is in the cache:
    # nothing could check it. The user passes the path of a file they chose to trust.
    entry = pretrained.lookup("fb_torch7", "resnext101_64x4d")
    placed = os.path.join(pretrained.cache_dir("downloads"), entry.filename)
    with open(placed, "wb") as f:
        f.write(b"anything")
    with pytest.raises(
        WeightsError, match=r"no published checksum.*pass the file's path.*CC BY-NC 4\.0"
    ):
        resolve_weights("fb_torch7", "resnext101_64x4d")
    assert resolve_weights(placed, "resnext101_64x4d") == placed


@pytest.mark.parametrize(
    "build, expected",
    [
        (lambda: resnext_tf.create_model("resnext29_8x64d"), "resnext29_8x64d"),
        (lambda: resnext_tf.build_resnext(50, 1, 64, bottleneck_type="resnext_C"), "resnet50"),
        (lambda: ResNeXt50(name="mine"), "resnext50_32x4d"),
        (lambda: resnext_tf.build_resnext(11, 2, 4, stem="cifar"), None),
    ],
)
def test_architecture_is_read_from_the_blocks(build, expected):
    assert architecture_name(build()) == expected


def state_of(model):
    """The torchvision-named state dict holding `model`'s current weights."""
    from resnext_tf.weights import torch_modules
    from resnext_tf.weights.state_dict import BN_TENSORS, CONV_TO_KERAS

    state = {}
    for module, layer, kind in torch_modules(model):
        if kind == "conv":
            state[f"{module}.weight"] = np.transpose(
                layer.kernel.numpy(), np.argsort(CONV_TO_KERAS)
            )
        elif kind == "bn":
            for var, name in BN_TENSORS:
                state[f"{module}.{name}"] = getattr(layer, var).numpy()
        else:
            state[f"{module}.weight"] = layer.kernel.numpy().T
            state[f"{module}.bias"] = layer.bias.numpy()
    return state


def test_convert_cli_writes_weights_h5(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    state = torch_files.random_state_dict(rng, (64, 128, 256), (3, 3, 3), 8, 64, 3, 100)
    save_file(state, str(tmp_path / "r29.safetensors"))
    out = tmp_path / "r29.weights.h5"
    args = ["--src", str(tmp_path / "r29.safetensors"), "--model", "resnext29_8x64d"]
    assert convert_main([*args, "--out", str(out)]) == 0
    # The classifier size (100) was read from the source.
    model = resnext_tf.create_model("resnext29_8x64d", num_classes=100)
    model.load_weights(str(out))
    for name, value in state_of(model).items():
        np.testing.assert_array_equal(value, state[name], err_msg=name)


def tiny_cifar():
    return resnext_tf.build_resnext(11, 2, 4, stem="cifar", num_classes=10)


@pytest.fixture
def tiny_safetensors(tmp_path):
    from safetensors.numpy import save_file

    state = torch_files.random_state_dict(
        np.random.default_rng(1), (64, 128, 256), (1, 1, 1), 2, 4, 3, 10
    )
    save_file(state, str(tmp_path / "tiny.safetensors"))
    return str(tmp_path / "tiny.safetensors"), state


def test_convert_writes_a_keras_weights_file(tmp_path, tiny_safetensors):
    path, state = tiny_safetensors
    convert_weights(path, tiny_cifar(), str(tmp_path / "tiny.weights.h5"))
    # The function and the `python -m resnext_tf.weights.convert` module have their own names.
    assert resnext_tf.weights.convert_weights is convert_weights
    assert resnext_tf.weights.convert.main is convert_main
    model = tiny_cifar()
    load_weights(model, str(tmp_path / "tiny.weights.h5"))
    np.testing.assert_array_equal(model.get_layer("head").bias.numpy(), state["fc.bias"])


def test_conversions_are_cached(tiny_safetensors, cache, monkeypatch):
    path, state = tiny_safetensors
    load_weights(tiny_cifar(), path)  # converts and caches
    assert len(os.listdir(cache / "converted")) == 1
    from resnext_tf.weights import loading

    monkeypatch.setattr(loading, "read_source", lambda path: pytest.fail("cache not used"))
    model = tiny_cifar()
    load_weights(model, path)
    np.testing.assert_array_equal(
        model.get_layer("stage2_block1").conv2.kernel.numpy(),
        np.transpose(state["layer2.0.conv2.weight"], (2, 3, 1, 0)),
    )


def test_skip_classifier_keeps_the_new_classifier_through_the_cache(tiny_safetensors):
    path, state = tiny_safetensors
    model = tiny_cifar()
    kernel = np.full(model.get_layer("head").kernel.shape, 3.0, np.float32)
    model.get_layer("head").kernel.assign(kernel)
    for _ in range(2):  # converts, then loads from the cache
        load_weights(model, path, skip_classifier=True)
        np.testing.assert_array_equal(model.get_layer("head").kernel.numpy(), kernel)
        np.testing.assert_array_equal(model.get_layer("stem_bn").beta.numpy(), state["bn1.bias"])


def test_applications_accept_every_published_name():
    # The name passes the constructor's validation and reaches the classifier-size check.
    with pytest.raises(ValueError, match=r"`weights='timm_a1h'`.*classes=10"):
        ResNeXt50(weights="timm_a1h", classes=10)
    with pytest.raises(ValueError, match=r"list_pretrained\(\).*Received: weights='timm_z9'"):
        ResNeXt50(weights="timm_z9")
