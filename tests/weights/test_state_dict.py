"""torchvision/timm state dicts -> Keras: exact numerics against torch, files, and errors."""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch_files

import resnext_tf
from resnext_tf.weights import assign_state_dict, load_weights, read_state_dict
from resnext_tf.weights.state_dict import CONV_TO_KERAS

HERE = pathlib.Path(__file__).parent

IMAGENET_PLANES = (64, 128, 256, 512)
RESNET50_BLOCKS = (3, 4, 6, 3)


def small_state(rng, cardinality=2, base_width=4, num_classes=10, counters=True):
    return torch_files.random_state_dict(
        rng, IMAGENET_PLANES, RESNET50_BLOCKS, cardinality, base_width, 7, num_classes, counters
    )


def small_model(cardinality=2, base_width=4, num_classes=10, **kwargs):
    return resnext_tf.build_resnext(
        50,
        cardinality=cardinality,
        base_width=base_width,
        num_classes=num_classes,
        input_shape=(64, 64, 3),
        **kwargs,
    )


def torch_reference(tmp_path, arch, size):
    """Runs torch_reference.py in its own process; returns (.pth path, input, logits).

    torch and torchvision come with the test extra, so a missing one fails the test (the child's
    ModuleNotFoundError is in the assertion message) rather than skipping it."""
    result = subprocess.run(
        [sys.executable, str(HERE / "torch_reference.py"), str(tmp_path), arch, str(size)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / "model.pth", np.load(tmp_path / "x.npy"), np.load(tmp_path / "logits.npy")


@pytest.mark.slow
def test_torchvision_resnext50_32x4d_pth_matches_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNEXT_TF_CACHE", str(tmp_path / "cache"))
    path, x, expected = torch_reference(tmp_path, "resnext50_32x4d", 224)
    model = resnext_tf.create_model("resnext50_32x4d")
    load_weights(model, str(path))
    logits = model(x, training=False).numpy()
    assert np.abs(expected).max() > 0.1  # not a degenerate all-zero comparison
    max_diff = np.abs(logits - expected).max()
    print(f"resnext50_32x4d max |logit difference| vs torch: {max_diff:.2e}")
    assert max_diff < 1e-4


@pytest.mark.parametrize("cardinality, base_width", [(2, 4), (1, 16)])
def test_small_torchvision_resnet_matches_torch(tmp_path, cardinality, base_width):
    path, x, expected = torch_reference(tmp_path, f"small:{cardinality}:{base_width}", 64)
    model = small_model(cardinality, base_width)
    assign_state_dict(model, read_state_dict(str(path)))
    assert np.abs(model(x, training=False).numpy() - expected).max() < 1e-4


def test_pth_checkpoint_wrappers_are_unwrapped(tmp_path):
    import torch  # the test extra installs it

    state = small_state(np.random.default_rng(2))
    wrapped = {
        "epoch": 3,
        "state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in state.items()},
    }
    torch.save(wrapped, tmp_path / "checkpoint.pth")
    read = read_state_dict(str(tmp_path / "checkpoint.pth"))
    assert sorted(read) == sorted(state)
    np.testing.assert_array_equal(read["layer4.2.conv2.weight"], state["layer4.2.conv2.weight"])


SAFETENSORS_WITHOUT_TORCH = """
import sys

# Any import of torch fails as if it were not installed. (A None entry in sys.modules would do
# that too, but libraries that peek at sys.modules["torch"], such as scipy's array-API helpers
# under sklearn, which Keras imports where it is installed, then break.)
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoTorch())
import numpy as np
import resnext_tf
from resnext_tf.weights import load_weights
model = resnext_tf.build_resnext(50, cardinality=2, base_width=4, num_classes=10,
                                 input_shape=(64, 64, 3))
load_weights(model, sys.argv[1])
np.savez(sys.argv[2], **{v.path: v.numpy() for v in model.weights})
"""


def test_safetensors_loads_without_torch(tmp_path):
    from safetensors.numpy import save_file

    state = small_state(np.random.default_rng(3))
    save_file(state, str(tmp_path / "model.safetensors"))
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent(SAFETENSORS_WITHOUT_TORCH))
    env_cache = {"RESNEXT_TF_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "model.safetensors"), str(tmp_path / "w.npz")],
        capture_output=True,
        text=True,
        env={**os.environ, **env_cache},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    weights = np.load(tmp_path / "w.npz")
    # Independent expectations: Torch layout transposed to Keras layout, variable by variable.
    expected = {
        "stem_conv/kernel": np.transpose(state["conv1.weight"], CONV_TO_KERAS),
        "stem_bn/moving_variance": state["bn1.running_var"],
        "stage3_block1/stage3_block1_conv2/kernel": np.transpose(
            state["layer3.0.conv2.weight"], CONV_TO_KERAS
        ),
        "stage3_block1/stage3_block1_shortcut_bn/moving_mean": state[
            "layer3.0.downsample.1.running_mean"
        ],
        "stage4_block3/stage4_block3_bn3/gamma": state["layer4.2.bn3.weight"],
        "head/kernel": state["fc.weight"].T,
        "head/bias": state["fc.bias"],
    }
    for path, value in expected.items():
        np.testing.assert_array_equal(weights[path], value, err_msg=path)


def test_every_tensor_must_be_used(tmp_path):
    state = small_state(np.random.default_rng(4))
    state["layer2.0.se.fc1.weight"] = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match=r"unused source tensors: layer2\.0\.se\.fc1\.weight"):
        assign_state_dict(small_model(), state)


def test_missing_tensor_is_named():
    state = small_state(np.random.default_rng(5))
    del state["layer1.0.bn2.running_var"]
    model = small_model()
    before = [v.numpy() for v in model.weights]
    with pytest.raises(ValueError, match=r"missing in the source: layer1\.0\.bn2\.running_var"):
        assign_state_dict(model, state)
    # Nothing was assigned.
    for value, variable in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(value, variable.numpy())


def test_shape_mismatch_is_named():
    state = small_state(np.random.default_rng(6), cardinality=4, base_width=2)
    with pytest.raises(
        ValueError, match=r"shape mismatch: layer1\.0\.conv2\.weight \(8, 2, 3, 3\)"
    ):
        assign_state_dict(small_model(), state)


def test_classifier_size_mismatch_explains_skip_classifier():
    state = small_state(np.random.default_rng(7), num_classes=1000)
    with pytest.raises(ValueError, match=r"fc\.weight \(1000, 2048\).*skip_classifier=True"):
        assign_state_dict(small_model(), state)


def test_skip_classifier_and_no_top():
    state = small_state(np.random.default_rng(8), num_classes=1000)
    model = small_model()
    head = [v.numpy() for v in model.get_layer("head").weights]
    assign_state_dict(model, state, skip_classifier=True)
    np.testing.assert_array_equal(model.get_layer("head").kernel.numpy(), head[0])
    np.testing.assert_array_equal(
        model.get_layer("stage1_block1").bn3.moving_mean.numpy(), state["layer1.0.bn3.running_mean"]
    )
    features = small_model(include_top=False, pooling="avg")
    assign_state_dict(features, state)  # no classifier: fc.* is not needed
    np.testing.assert_array_equal(features.get_layer("stem_bn").gamma.numpy(), state["bn1.weight"])


def test_resnext_b_model_is_refused():
    state = small_state(np.random.default_rng(9))
    with pytest.raises(ValueError, match=r"bottleneck_type='resnext_C'"):
        assign_state_dict(small_model(bottleneck_type="resnext_B"), state)
