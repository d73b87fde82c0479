"""Folded BatchNorm, bfloat16 and the ONNX / OpenVINO / LiteRT exports against the Keras model.

Every format runs here (CI installs the test extra, which holds each runtime): a tiny model,
a few generated photos, one export per format shared by the module.
"""

import json
import os

import keras
import numpy as np
import onnxruntime
import openvino
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from data.image_samples import encode, natural_image

import resnext_tf
from resnext_tf import export, fold
from resnext_tf.contract import DataContract
from resnext_tf.data import evaluation, transforms
from resnext_tf.data.config import DataConfig
from resnext_tf.export import cli, formats
from resnext_tf.layers import GroupedConv2D

SIZE = 64
CLASSES = 10
# Parity of the float32 formats with the Keras model: max |difference| over the logits within
# this fraction of the largest |logit| (the 1e-4 relative).
FLOAT32_RTOL = 1e-4


def random_statistics(model, seed):
    """Random BN statistics, scales and shifts, so folding has something to fold."""
    rng = np.random.default_rng(seed)
    ranges = {
        "moving_mean": (-0.2, 0.2),
        "moving_variance": (0.5, 2.0),
        "gamma": (0.5, 1.5),
        "beta": (-0.2, 0.2),
    }
    for v in model.weights:
        for suffix, (low, high) in ranges.items():
            if v.path.endswith(suffix):
                v.assign(rng.uniform(low, high, v.shape))
    return model


def tiny(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    kwargs = {"cardinality": 2, "base_width": 4, "conv_impl": "grouped", **kwargs}
    model = resnext_tf.build_resnext(50, input_shape=(SIZE, SIZE, 3), num_classes=CLASSES, **kwargs)
    return random_statistics(model, seed)


def photos(count, seed=0):
    """Generated photos (varied sizes) after the evaluation transform: float32 [N, S, S, 3]."""
    rng = np.random.default_rng(seed)
    cfg = DataConfig("imagenet", image_size=SIZE)
    images = []
    for i in range(count):
        data = encode(natural_image(rng, 90 + 7 * i, 120 - 5 * i))
        images.append(evaluation.imagenet_eval(tf.constant(data), cfg).numpy())
    return np.stack(images)


def max_relative_error(actual, expected):
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def assert_bf16_agrees(bf16, fp32, min_compared):
    """bfloat16 logits within fold.BF16_LOGIT_TOLERANCE of each image's float32 logit scale,
    and the same top-1 on every image whose float32 margin (top-1 minus top-2) exceeds twice
    that bound, the only images where rounding cannot swap the top two. At least
    `min_compared` images must be compared, so the check cannot pass vacuously."""
    bound = fold.BF16_LOGIT_TOLERANCE * np.abs(fp32).max(axis=1)
    assert (np.abs(bf16 - fp32).max(axis=1) <= bound).all(), (np.abs(bf16 - fp32).max(1), bound)
    top2 = np.sort(fp32, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * bound
    assert clear.sum() >= min_compared, (top2, bound)
    np.testing.assert_array_equal(bf16.argmax(1)[clear], fp32.argmax(1)[clear])


# ----------------------------------------------------------------------------------------------
# Folding


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"bottleneck_type": "resnext_B"},
        {"bottleneck_type": "resnet", "cardinality": 1, "base_width": 64, "shortcut_type": "A"},
        {"shortcut_type": "C", "conv_impl": "split"},
    ],
    ids=["resnext_C", "resnext_B", "resnet_A", "split_C"],
)
def test_folded_model_matches_keras_and_has_no_batchnorm(kwargs):
    model = tiny(**kwargs)
    folded = fold.fold_batchnorm(model)
    layers = list(folded._flatten_layers())
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in layers)
    convs = [layer for layer in layers if isinstance(layer, GroupedConv2D)]
    assert convs and all(isinstance(conv, fold.FoldedConv2D) for conv in convs)
    # Only form C has grouped convolutions (form B has one branch a group).
    grouped = kwargs.get("bottleneck_type", "resnext_C") == "resnext_C"
    assert any(conv.groups > 1 for conv in convs) == grouped
    x = photos(2)
    expected = model(x, training=False).numpy()
    assert max_relative_error(folded(x).numpy(), expected) <= FLOAT32_RTOL


def test_folded_bfloat16_computes_in_bfloat16_with_float32_in_and_out():
    model = tiny()
    folded = fold.fold_batchnorm(model, "bfloat16")
    assert folded.get_layer("stem_conv").kernel.dtype == "bfloat16"
    assert folded.get_layer("stage1_block1").conv2.compute_dtype == "bfloat16"
    assert folded.get_layer("head").compute_dtype == "float32"
    x = photos(8)
    logits = folded(x)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert_bf16_agrees(logits.numpy(), model(x, training=False).numpy(), min_compared=3)


def test_folding_refuses_an_unknown_dtype():
    with pytest.raises(ValueError, match="dtype='float16'"):
        fold.fold_batchnorm(tiny(), "float16")


# ----------------------------------------------------------------------------------------------
# Exports


@pytest.fixture(scope="module")
def model():
    return tiny(seed=1)


@pytest.fixture(scope="module")
def images():
    return photos(8, seed=2)


@pytest.fixture(scope="module")
def reference(model, images):
    return model(images, training=False).numpy()


@pytest.fixture(scope="module")
def exports(model, tmp_path_factory):
    """{(format, dtype): version directory} of the tiny model."""
    root = tmp_path_factory.mktemp("exports")
    cases = [(fmt, "float32") for fmt in export.FORMATS] + [("saved_model", "bfloat16")]
    return {
        (fmt, dtype): export.export_model(
            model, root, f"tiny_{fmt}_{dtype}", 1, fmt=fmt, dtype=dtype, warmup=False
        )
        if fmt == "saved_model"
        else export.export_model(model, root, f"tiny_{fmt}_{dtype}", 1, fmt=fmt, dtype=dtype)
        for fmt, dtype in cases
    }


def saved_model_logits(path, images):
    signature = tf.saved_model.load(path).signatures[export.IMAGES_SIGNATURE]
    return signature(images=tf.constant(images))["logits"].numpy()


def onnx_logits(path, images):
    session = onnxruntime.InferenceSession(
        os.path.join(path, "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in session.get_inputs()] == [export.IMAGES_INPUT]
    return session.run([export.LOGITS], {export.IMAGES_INPUT: images})[0]


def openvino_logits(path, images, precision):
    compiled = openvino.Core().compile_model(
        os.path.join(path, "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": precision}
    )
    return compiled({export.IMAGES_INPUT: images})[export.LOGITS]


def litert_logits(path, images):
    interpreter = Interpreter(os.path.join(path, "model.tflite"))
    (inputs,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(inputs["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inputs["index"], images)
    interpreter.invoke()
    (outputs,) = interpreter.get_output_details()
    return interpreter.get_tensor(outputs["index"])


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_float32_export_matches_keras(exports, images, reference, fmt):
    path = exports[(fmt, "float32")]
    run = {
        "saved_model": saved_model_logits,
        "onnx": onnx_logits,
        "openvino": lambda p, x: openvino_logits(p, x, "f32"),
        "litert": litert_logits,
    }[fmt]
    logits = run(path, images)
    assert logits.shape == reference.shape and logits.dtype == np.float32
    assert max_relative_error(logits, reference) <= FLOAT32_RTOL


def test_float_input_exports_keep_1x1_convolutions_as_convolutions(model, exports):
    import onnx

    # The SavedModel runs the later stages' 1x1 convolutions as matrix products (TensorFlow's
    # per-call kernel reorder); ONNX Runtime, OpenVINO and LiteRT pack kernels once, so their
    # graphs keep convolutions: the classifier is the one matrix product.
    served = export.serving_model(model)
    spec = tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32)
    graph = tf.function(lambda x: served(x, training=False)).get_concrete_function(spec).graph
    assert sum(op.type in ("MatMul", "BatchMatMulV2") for op in graph.get_operations()) > 1
    proto = onnx.load(os.path.join(exports[("onnx", "float32")], "model.onnx"))
    assert [n.op_type for n in proto.graph.node].count("MatMul") == 1


def test_bfloat16_exports_agree_on_top1(exports, images, reference):
    saved = saved_model_logits(exports[("saved_model", "bfloat16")], images)
    assert saved.dtype == np.float32
    assert_bf16_agrees(saved, reference, min_compared=3)
    # OpenVINO's bfloat16 is chosen when the IR is compiled; this CPU has the instructions.
    ov_bf16 = openvino_logits(exports[("openvino", "float32")], images, "bf16")
    assert_bf16_agrees(ov_bf16, reference, min_compared=3)


def test_bfloat16_saved_model_stores_bfloat16_weights(exports):
    reader = tf.train.load_checkpoint(
        os.path.join(exports[("saved_model", "bfloat16")], "variables", "variables")
    )
    dtypes = [d for k, d in reader.get_variable_to_dtype_map().items() if "VARIABLE" in k]
    # Every folded kernel and bias; the classifier's kernel and bias stay float32.
    assert dtypes.count(tf.float32) == 2 and dtypes.count(tf.bfloat16) > 100


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_export_info_states_the_input_contract(exports, fmt):
    with open(os.path.join(exports[(fmt, "float32")], formats.INFO_FILE)) as f:
        info = json.load(f)
    assert info["format"] == fmt and info["dtype"] == "float32"
    assert info["input"] == {
        "name": "images",
        "dtype": "float32",
        "shape": [None, SIZE, SIZE, 3],
        "layout": "NHWC",
        "channels": "RGB",
    }
    assert info["output"]["name"] == "logits"
    pre = info["preprocessing"]
    assert "resize the shorter side to 73 (bicubic, no antialiasing)" in pre["steps"][1]
    assert pre["mean"] == list(transforms.IMAGENET_MEAN)
    assert pre["std"] == list(transforms.IMAGENET_STD)
    # The data contract, as predict reads it back: the model's evaluation and class names.
    carried = DataContract.from_json(info["contract"])
    assert carried == DataContract("imagenet", SIZE, eval_resize=73)
    if fmt == "openvino":
        assert info["openvino_plugin_config"] == {"INFERENCE_PRECISION_HINT": "f32"}


def test_formats_without_bfloat16_kernels_refuse_it(model, tmp_path):
    for fmt in ("onnx", "litert"):
        with pytest.raises(ValueError, match="cannot compute in bfloat16"):
            export.export_model(model, tmp_path, "tiny", fmt=fmt, dtype="bfloat16")
    with pytest.raises(ValueError, match="apply to fmt='saved_model' only"):
        export.export_model(model, tmp_path, "tiny", fmt="onnx", top_k=3)
    with pytest.raises(ValueError, match="Unknown format"):
        export.export_model(model, tmp_path, "tiny", fmt="tflite")
    assert not os.path.exists(tmp_path / "tiny")


def test_missing_runtime_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name)
    )
    with pytest.raises(ImportError, match=r"resnext_tf\[openvino\]"):
        formats.require("openvino")


def test_cli_exports_each_format(tmp_path, monkeypatch, capsys):
    model = tiny(seed=3)
    weights = str(tmp_path / "tiny.weights.h5")
    model.save_weights(weights)
    # The CLI's own path (create_model, load_weights, export_model) with a tiny architecture.
    monkeypatch.setattr(
        cli,
        "create_model",
        lambda name, num_classes: tiny(seed=4) if num_classes == CLASSES else None,
    )
    args = ["--model=resnext50_32x4d", f"--weights={weights}", f"--export_dir={tmp_path}"]
    args += [f"--num_classes={CLASSES}", "--model_name=cli"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args + ["--format=onnx", "--dtype=bfloat16"])
    assert exit_info.value.code == 2 and "cannot compute in bfloat16" in capsys.readouterr().err
    assert cli.main(args + ["--format=openvino", "--dtype=bfloat16"]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert path == os.path.join(str(tmp_path), "cli", "1")
    assert sorted(os.listdir(path)) == [formats.INFO_FILE, "model.bin", "model.xml"]
    with open(os.path.join(path, formats.INFO_FILE)) as f:
        assert json.load(f)["openvino_plugin_config"] == {"INFERENCE_PRECISION_HINT": "bf16"}
    x = photos(2, seed=4)
    logits = openvino_logits(path, x, "f32")
    assert max_relative_error(logits, model(x, training=False).numpy()) <= FLOAT32_RTOL
    assert cli.main(args + ["--format=litert"]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert max_relative_error(litert_logits(path, x), model(x, training=False).numpy()) <= 1e-4
