"""SavedModel export: a fresh process serves what Keras computes, with no XLA and clean errors."""

import io
import json
import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow.core.protobuf import saved_model_pb2
from test_tf_ops import traced_ops

import resnext_tf
from resnext_tf import contract, export, tf_ops
from resnext_tf.data import decode, evaluation
from resnext_tf.data.config import DataConfig, ImageLimits
from resnext_tf.export import cli
from resnext_tf.layers import BatchNorm, GroupedConv2D

SIZE = 64  # input side of the small ImageNet-stem model
# CIFAR-10 mean and std on 0-255 images (docs/reference.md "Data").
CIFAR10_MEAN, CIFAR10_STD = (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)
XLA = "_XlaMustCompile"
CLASS_INDEX = os.path.join(
    os.path.dirname(resnext_tf.__file__), "data_files/imagenet_class_index.json"
)

SERVE_IN_FRESH_PROCESS = """
import json, sys
import numpy as np
import tensorflow as tf

export_path, out, *image_files = sys.argv[1:]
images = [open(name, "rb").read() for name in image_files]
serve = tf.saved_model.load(export_path).signatures["serving_default"]
outputs = {k: v.numpy() for k, v in serve(image_bytes=tf.constant(images)).items()}
outputs = {k: v.astype("S") if v.dtype == object else v for k, v in outputs.items()}
errors = {}
bad_requests = {
    "not_an_image": lambda: serve(image_bytes=tf.constant([b"not an image"])),
    "empty_bytes": lambda: serve(image_bytes=tf.constant([b""])),
    "empty_batch": lambda: serve(image_bytes=tf.constant([], tf.string)),
    "mixed": lambda: serve(image_bytes=tf.constant([images[0], images[1][:300], images[2]])),
    "rank_2": lambda: serve(image_bytes=tf.constant([[images[0]]])),
    "float_dtype": lambda: serve(image_bytes=tf.constant([1.0])),
}
for name, request in bad_requests.items():
    try:
        request()
        errors[name] = None
    except Exception as e:
        errors[name] = f"{type(e).__name__}: {e}"
# Still serving after the bad requests.
outputs["again"] = serve(image_bytes=tf.constant(images[:1]))["probabilities"].numpy()
np.savez(out, **outputs)
with open(out + ".json", "w") as f:
    json.dump(errors, f)
"""


def random_statistics(model, seed):
    """Random BN statistics and a wider classifier, so the served numbers are not trivial."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if v.path.endswith("moving_mean"):
            v.assign(rng.uniform(-0.2, 0.2, v.shape))
        elif v.path.endswith("moving_variance"):
            v.assign(rng.uniform(0.5, 2.0, v.shape))
        elif v.path == "head/kernel":
            v.assign(rng.normal(0, 0.05, v.shape))
    return model


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)  # the same initial weights, hence the same numbers, every run
    # Grouped (XLA) convolutions in the source model: the export must rewrite them.
    return random_statistics(
        resnext_tf.build_resnext(
            50, cardinality=2, base_width=4, input_shape=(SIZE, SIZE, 3), conv_impl="grouped"
        ),
        seed=0,
    )


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return export.export_saved_model(model, tmp_path_factory.mktemp("serving"), "tiny", 1)


def encode(array, fmt, mode=None):
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """PIL-written images: an RGB JPEG, a CMYK JPEG (an ImageNet quirk) and a grey PNG."""
    rng = np.random.default_rng(1)
    smooth = np.cumsum(rng.integers(0, 9, (90, 120, 3)), axis=1).astype(np.uint8)
    directory = tmp_path_factory.mktemp("images")
    files = []
    for name, data in [
        ("rgb.jpg", encode(smooth, "JPEG")),
        ("cmyk.jpg", encode(smooth[:70, :100], "JPEG", "CMYK")),
        ("grey.png", encode(smooth[:, :50, 0], "PNG")),
    ]:
        (directory / name).write_bytes(data)
        files.append(str(directory / name))
    return files


def keras_logits(model, files):
    cfg = DataConfig("imagenet", image_size=SIZE)
    images = [evaluation.imagenet_eval(tf.constant(open(f, "rb").read()), cfg) for f in files]
    return model(tf.stack(images), training=False).numpy()


def test_fresh_process_serves_the_keras_probabilities(model, exported, image_files, tmp_path):
    out = str(tmp_path / "served.npz")
    script = [sys.executable, "-c", SERVE_IN_FRESH_PROCESS, exported, out, *image_files]
    # Without oneDNN, as TF builds without it run grouped Conv2D (Eigen); saved_model_cli
    # below runs the oneDNN kernels.
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}
    result = subprocess.run(script, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    served = np.load(out)
    logits = keras_logits(model, image_files)
    probabilities = tf.nn.softmax(logits).numpy()
    assert np.abs(logits).max() < 50  # float32 sums of this size are exact to ~1e-5
    np.testing.assert_allclose(served["logits"], logits, rtol=1e-5, atol=1e-4)
    # Split (served) and grouped (Keras) convolutions sum in different orders.
    np.testing.assert_allclose(served["probabilities"], probabilities, rtol=1e-4, atol=1e-6)
    assert probabilities.max() > 10 * probabilities.min()  # not a uniform distribution
    top5 = np.argsort(-probabilities, axis=1)[:, :5]
    np.testing.assert_array_equal(served["classes"], top5)
    np.testing.assert_allclose(
        served["scores"], np.take_along_axis(probabilities, top5, 1), rtol=1e-4, atol=1e-6
    )
    with open(CLASS_INDEX) as f:
        index = json.load(f)
    assert [w.decode() for w in served["wnids"][0]] == [index[str(c)][0] for c in top5[0]]
    assert [w.decode() for w in served["labels"][0]] == [index[str(c)][1] for c in top5[0]]
    np.testing.assert_allclose(served["again"], probabilities[:1], rtol=1e-4, atol=1e-6)

    with open(out + ".json") as f:
        errors = json.load(f)
    # Each failure names the image by its index in the request, and why.
    assert errors["not_an_image"].startswith("InvalidArgumentError")
    assert "image 0: is not a JPEG, PNG, GIF, BMP or WebP image" in errors["not_an_image"]
    assert "image 0: is empty (0 bytes)" in errors["empty_bytes"]
    assert f"[{export.EMPTY_BATCH}]" in errors["empty_batch"]
    assert f"[image 1: {export.UNDECODABLE}]" in errors["mixed"]
    # The signature's dtype and rank are checked before the graph runs.
    for name in ("rank_2", "float_dtype"):
        assert errors[name].split(":")[0] in ("ValueError", "TypeError", "InvalidArgumentError")


def test_no_function_needs_xla(exported):
    with open(os.path.join(exported, "saved_model.pb"), "rb") as f:
        data = f.read()
    assert XLA.encode() not in data
    saved_model = saved_model_pb2.SavedModel.FromString(data)
    graph = saved_model.meta_graphs[0].graph_def
    assert len(graph.library.function) > 10
    assert not any(XLA in node.attr for node in graph.node)
    for function in graph.library.function:
        assert XLA not in function.attr, function.signature.name
        assert not any(XLA in node.attr for node in function.node_def), function.signature.name


def test_each_variable_is_stored_once(model, exported):
    reader = tf.train.load_checkpoint(os.path.join(exported, "variables", "variables"))
    sizes = [np.prod(s) for k, s in reader.get_variable_to_shape_map().items() if "/" in k]
    # The export stores the folded model (resnext_tf.fold): biases instead of BN variables.
    assert sum(sizes) == sum(np.prod(v.shape) for v in export.serving_model(model).variables)


def test_check_no_xla_catches_keras_grouped_convolution(tmp_path, monkeypatch):
    # Keras' own grouped convolution (the library's fallback where TF has no native one) runs
    # on TF under XLA.
    monkeypatch.setattr(
        tf_ops, "grouped_conv_supported", lambda dtype="float32", gradients=True: False
    )
    layer = GroupedConv2D(8, groups=2, conv_impl="grouped")
    layer.build((None, 8, 8, 8))
    module = tf.Module()
    module.layer = layer
    module.call = tf.function(layer.__call__, input_signature=[tf.TensorSpec((1, 8, 8, 8))])
    tf.saved_model.save(module, str(tmp_path), signatures=module.call.get_concrete_function())
    with pytest.raises(RuntimeError, match=XLA):
        export.check_no_xla(str(tmp_path))


def saved_model_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_saved_model_cli_runs_the_tensor_signature(model, exported, tmp_path):
    x = np.random.default_rng(2).standard_normal((2, SIZE, SIZE, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = saved_model_cli(
        "run", "--dir", exported, "--tag_set", "serve", "--signature_def", "predict_images",
        "--inputs", f"images={tmp_path / 'x.npy'}", "--outdir", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    expected = tf.nn.softmax(model(x, training=False)).numpy()
    probabilities = np.load(tmp_path / "out/probabilities.npy")
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)


def test_saved_model_cli_reports_a_bad_image_as_an_error(exported):
    # TF Serving's session-based loader runs the tf.data decoding of serving_default too.
    png = encode(np.zeros((8, 8, 3), np.uint8), "PNG")
    result = saved_model_cli(
        "run", "--dir", exported, "--tag_set", "serve", "--signature_def", "serving_default",
        "--input_exprs", f"image_bytes=[{png!r}, b'GIF89a but not really']",
    )  # fmt: skip
    assert result.returncode == 1  # an error status, not a crash (a signal gives < 0)
    # A GIF is sized by its frames, and this one has none.
    assert "[image 1: has no pixels (0x0 in its header)]" in result.stderr
    assert "image 0" not in result.stderr


def test_warmup_request_is_a_real_prediction_log(exported):
    # tensorflow-serving-api comes with the test extra.
    from tensorflow_serving.apis import prediction_log_pb2

    records = list(tf.data.TFRecordDataset(os.path.join(exported, export.WARMUP_FILE)))
    assert len(records) == 1
    request = prediction_log_pb2.PredictionLog.FromString(records[0].numpy()).predict_log.request
    assert (request.model_spec.name, request.model_spec.signature_name) == (
        "tiny",
        "serving_default",
    )
    (image,) = tf.make_ndarray(request.inputs["image_bytes"])
    assert tf.io.decode_jpeg(image).shape == (240, 320, 3)


def test_warmup_is_skipped_with_a_message_without_serving_apis(tmp_path, monkeypatch, caplog):
    for name in ("tensorflow_serving", "tensorflow_serving.apis"):
        monkeypatch.setitem(sys.modules, name, None)  # the import now fails
    with caplog.at_level(logging.WARNING):
        assert export.write_warmup(str(tmp_path), "m", export.sample_jpeg()) is None
    assert "pip install tensorflow-serving-api" in caplog.text
    assert not os.path.exists(tmp_path / export.WARMUP_FILE)


def tiny_cifar(**kwargs):
    keras.utils.set_random_seed(0)
    model = resnext_tf.build_resnext(11, 2, 4, stem="cifar", num_classes=10, **kwargs)
    return contract.attach(model, contract.DataContract("cifar10"))


@pytest.mark.parametrize("conv_impl", export.SERVING_CONV_IMPLS)
def test_serving_model_is_xla_free_float32_and_returns_logits(conv_impl):
    model = random_statistics(
        tiny_cifar(conv_impl="grouped", classifier_activation="softmax"), seed=3
    )
    x = np.random.default_rng(4).standard_normal((2, 32, 32, 3)).astype(np.float32)
    # BN kept (fold_bn=False): with grouped convolutions Keras' own, see
    # test_fresh_process_serves_the_keras_probabilities.
    served = export.serving_model(model, conv_impl, fold_bn=False)
    block = served.get_layer("stage2_block1")
    assert block.conv2.conv_impl == conv_impl
    bn = {"grouped": keras.layers.BatchNormalization, "split": BatchNorm}[conv_impl]
    assert type(block.bn2) is type(served.get_layer("stem_bn")) is bn
    np.testing.assert_allclose(
        tf.nn.softmax(served(x, training=False)), model(x, training=False), atol=1e-6
    )
    # The default: BN folded into the convolutions (resnext_tf.fold, tests/test_deploy.py).
    served = export.serving_model(model, conv_impl)
    block = served.get_layer("stage2_block1")
    assert block.conv2.conv_impl == conv_impl and block.conv2.bias.shape == (block.width,)
    layers = served._flatten_layers()
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in layers)
    np.testing.assert_allclose(
        tf.nn.softmax(served(x, training=False)), model(x, training=False), atol=1e-6
    )
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = tiny_cifar()
    finally:
        keras.config.set_dtype_policy("float32")
    assert mixed.get_layer("stem_conv").compute_dtype == "float16"
    served = export.serving_model(mixed, conv_impl)
    assert {layer.compute_dtype for layer in served.layers} == {"float32"}


def test_grouped_serving_needs_only_the_forward_convolution(monkeypatch):
    # As TensorFlow without oneDNN: grouped forward runs natively, the gradient ops refuse.
    monkeypatch.setattr(
        tf_ops, "grouped_conv_supported", lambda dtype="float32", gradients=True: not gradients
    )
    model = tiny_cifar()
    for fold_bn in (True, False):
        served = export.serving_model(model, "grouped", fold_bn=fold_bn)
        op_types, xla = traced_ops(served, tf.TensorSpec((1, 32, 32, 3)))
        assert not xla and "Split" not in op_types, op_types
    monkeypatch.setattr(
        tf_ops, "grouped_conv_supported", lambda dtype="float32", gradients=True: False
    )
    with pytest.raises(ValueError, match=r"conv_impl='grouped'.*conv_impl='split'"):
        export.serving_model(model, "grouped")
    assert export.serving_model(model, "split").get_layer("stem_conv").conv_impl == "split"


def test_cifar_export_versions_and_overwrite(tmp_path):
    model = random_statistics(tiny_cifar(), seed=5)
    names = [f"class{i}" for i in range(10)]
    first = export.export_saved_model(model, tmp_path, "cifar", class_names=names, warmup=False)
    assert first == os.path.join(tmp_path, "cifar", "1")
    # A 32x32 PNG is only normalised (CIFAR evaluation), computed here independently.
    pixels = np.random.default_rng(6).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    normalized = (pixels - np.float32(CIFAR10_MEAN)) / np.float32(CIFAR10_STD)
    expected = model(normalized, training=False).numpy()
    serve = tf.saved_model.load(first).signatures["serving_default"]
    out = serve(image_bytes=tf.constant([encode(pixels[0], "PNG")]))
    np.testing.assert_allclose(out["logits"], expected, atol=1e-4)
    classes = out["classes"].numpy()[0]
    assert [b.decode() for b in out["labels"].numpy()[0]] == [names[c] for c in classes]
    assert "wnids" not in out
    split = export.export_saved_model(model, tmp_path, "split", conv_impl="split", warmup=False)
    out = tf.saved_model.load(split).signatures["serving_default"](
        image_bytes=tf.constant([encode(pixels[0], "PNG")])
    )
    np.testing.assert_allclose(out["logits"], expected, atol=1e-4)

    with pytest.raises(FileExistsError, match="overwrite"):
        export.export_saved_model(model, tmp_path, "cifar", 1, warmup=False)
    assert export.export_saved_model(model, tmp_path, "cifar", warmup=False).endswith("2")
    open(os.path.join(first, "marker"), "w").close()
    export.export_saved_model(model, tmp_path, "cifar", 1, overwrite=True, warmup=False)
    assert not os.path.exists(os.path.join(first, "marker"))
    assert sorted(os.listdir(tmp_path / "cifar")) == ["1", "2"]  # no temporary folders left


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"model_name": "../up"}, "Invalid model_name"),
        ({"version": 0}, "version must be a positive integer"),
        ({"top_k": 0}, "top_k must be a positive integer"),
        ({"class_names": ["a", "b"]}, "class names must name every class"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, match):
    kwargs = {"model_name": "m", **kwargs}
    with pytest.raises(ValueError, match=match):
        export.export_saved_model(tiny_cifar(), tmp_path, **kwargs)


def test_export_needs_the_classifier(tmp_path):
    with pytest.raises(ValueError, match="include_top=True"):
        export.export_saved_model(tiny_cifar(include_top=False, pooling="avg"), tmp_path, "m")


def test_an_imagenet_model_carries_the_training_evaluation():
    # 320 * 256 / 224 = 365.7: the nearest integer, as training evaluates.
    model = resnext_tf.build_resnext(50, 2, 4, input_shape=(320, 320, 3))
    carried = contract.of_model(model)
    assert (carried.dataset, carried.image_size, carried.eval_resize) == ("imagenet", 320, 366)
    assert carried.labels[0] == "tench" and len(carried.labels) == 1000
    assert export.model_contract(model) == carried
    # A CIFAR model's dataset is not the architecture's to say: it must be given.
    cifar = resnext_tf.build_resnext(11, 2, 4, stem="cifar", num_classes=100)
    with pytest.raises(ValueError, match="carries no data contract"):
        export.model_contract(cifar)
    given = export.model_contract(cifar, DataConfig("cifar100"))
    assert (given.dataset, given.labels[0], len(given.labels)) == ("cifar100", "apple", 100)


def test_cli_image_limit_flags(capsys):
    base = ["--model", "resnext29_8x64d", "--weights", "w.h5", "--export_dir", "out"]
    assert cli.parse_args(base).image_limits == decode.DEFAULT_LIMITS
    limits = ["--max_image_pixels", "1000", "--max_image_aspect", "3.5", "--max_image_bytes", "99"]
    assert cli.parse_args(base + limits).image_limits == ImageLimits(1000, 3.5, 99)
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(base + ["--max_image_aspect", "0.5"])
    assert exit_info.value.code == 2
    assert "max_aspect must be >= 1" in capsys.readouterr().err
    # The names export had before, which training did not share, still work with a warning.
    old = ["--max_pixels=1000", "--max_aspect", "3.5", "--max_bytes=99"]
    assert cli.parse_args(base + old).image_limits == ImageLimits(1000, 3.5, 99)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: --max_pixels is deprecated; use --max_image_pixels",
        "warning: --max_aspect is deprecated; use --max_image_aspect",
        "warning: --max_bytes is deprecated; use --max_image_bytes",
    ]


@pytest.mark.slow
def test_cli_exports_a_registry_model_from_weights(tmp_path):
    model = resnext_tf.create_model("resnext29_8x64d")
    random_statistics(model, seed=7).save_weights(str(tmp_path / "r29.weights.h5"))
    args = [
        "--model", "resnext29_8x64d", "--weights", str(tmp_path / "r29.weights.h5"),
        "--export_dir", str(tmp_path / "serving"), "--version", "3", "--no_warmup",
    ]  # fmt: skip
    assert cli.main(args) == 0
    served = tf.saved_model.load(str(tmp_path / "serving/resnext29_8x64d/3"))
    x = np.random.default_rng(8).standard_normal((1, 32, 32, 3)).astype(np.float32)
    out = served.signatures["predict_images"](images=tf.constant(x))
    np.testing.assert_allclose(out["logits"], model(x, training=False), atol=1e-4)
