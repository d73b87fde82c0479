"""Exports for serving: a TF Serving SavedModel, ONNX, OpenVINO IR and LiteRT.

    python -m resnext_tf.export --model=resnext50_32x4d --weights=imagenet \
        --export_dir=/tmp/serving --version=1 [--format=saved_model] [--dtype=bfloat16]

writes /tmp/serving/resnext50_32x4d/1/, the layout TF Serving and OpenVINO Model Server poll
(--model_base_path points at /tmp/serving/resnext50_32x4d). Every format folds BatchNormalization
into the convolutions (`resnext_tf.fold`); --dtype=bfloat16 computes in bfloat16 with float32
images in and float32 logits out. --format=onnx, openvino or litert writes model.onnx,
model.xml + model.bin or model.tflite through Keras' own exporters: one float32 input "images"
[N, H, W, 3], transformed as predict_images expects (export_info.json beside the model spells
the transform out), and one output "logits". The SavedModel's signatures:

  serving_default  image_bytes: string [N >= 1] (JPEG, PNG, GIF, BMP or WebP; the REST form
                   is {"instances": [{"b64": "..."}]}), decoded and given the evaluation
                   transform of resnext_tf.data inside the graph, so training and serving cannot
                   drift. Each image is checked against the export's image limits from its
                   header before it is decoded; a request with a refused or undecodable image
                   fails with InvalidArgument naming each such image ("image 3: ...").
  predict_images   images: float32 [N, H, W, 3], already transformed.

Both return logits, probabilities, the top-k classes and scores, and for ImageNet the top-k
wnids and labels. Keras' own grouped convolution runs on TensorFlow under XLA, which stock TF
Serving does not enable; the exported graph computes grouped convolutions with resnext_tf's
native TensorFlow path (one grouped Conv2D) or, on request, as split convolutions, and
neither needs XLA.
"""

import argparse
import dataclasses
import functools
import json
import logging
import os
import re
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from resnext_tf import fold, hardware
from resnext_tf.backend_ops import tf_native_grouped_conv
from resnext_tf.data import pipeline, transforms
from resnext_tf.data.config import DataConfig
from resnext_tf.errors import ExportError, one_line, user_errors_exit
from resnext_tf.layers import Bottleneck

logger = logging.getLogger(__name__)

SERVING_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "predict_images"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
DEFAULT_TOP_K = 5
# TF Serving replays the PredictionLog records of this file before it serves a new version.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# The attribute of functions that only run under XLA; a graph with it fails on stock TF Serving.
XLA_MUST_COMPILE = b"_XlaMustCompile"
# Errors of serving_default, after "image <index>: " where they concern one image.
EMPTY_BATCH = "empty batch: expected at least 1 image"
UNDECODABLE = "cannot be decoded (damaged, or not a JPEG, PNG, GIF, BMP or WebP image)"
CLASS_INDEX_PATH = os.path.join(
    os.path.dirname(__file__), "data_files", "imagenet_class_index.json"
)
IMAGENET_CLASSES = 1000
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Grouped convolutions in the exported graph: "grouped", one tf.nn.conv2d a layer (TensorFlow's
# native grouped kernel, which every TensorFlow runs forward, with or without oneDNN, so the
# graph is the same whichever CPU exports it and serves on stock TF Serving), or "split", one
# convolution a group. docs/export.md compares the two.
SERVING_CONV_IMPLS = ("grouped", "split")
FORMATS = ("saved_model", "onnx", "openvino", "litert")
# The model file each float-input format writes into the version directory.
MODEL_FILES = {"onnx": "model.onnx", "openvino": "model.xml", "litert": "model.tflite"}
# Beside every export: the input contract of the float-input formats, the compute dtype.
INFO_FILE = "export_info.json"
LOGITS = "logits"
# ONNX Runtime's and LiteRT's CPU kernels have no bfloat16 convolutions; OpenVINO chooses its
# precision when it compiles the model (INFERENCE_PRECISION_HINT: bf16 by default on CPUs with
# AVX512-BF16 or AMX, f32 on request), so its IR is the same float32 graph for both dtypes.
BF16_FORMATS = ("saved_model", "openvino")
OPENVINO_PRECISION = {"float32": "f32", "bfloat16": "bf16"}


class _ServingBottleneck(Bottleneck):
    """Bottleneck with Keras' BatchNormalization in place of resnext_tf's fused one.

    For graphs with grouped convolutions: TensorFlow's CPU graph optimizer without oneDNN fuses
    Conv2D + FusedBatchNormV3 (+ ReLU) into a kernel that rejects groups ("Fused conv
    implementation does not support grouped convolutions"), and such a build may serve the
    SavedModel. Keras' element-wise normalization is not fused that way.
    """

    def make_norm(self, *args, **kwargs):
        return keras.layers.BatchNormalization.from_config(
            super().make_norm(*args, **kwargs).get_config()
        )

    def make_conv(self, *args, **kwargs):
        conv = super().make_conv(*args, **kwargs)
        conv.inference_only = True  # the serving graph takes no gradients
        return conv


# Substituted when the exported graph holds grouped convolutions (see _ServingBottleneck).
GROUPED_SERVING_LAYERS = {
    "resnext_tf>BatchNorm": keras.layers.BatchNormalization,
    "resnext_tf>Bottleneck": _ServingBottleneck,
}


def serving_model(model, conv_impl="grouped", dtype="float32", fold_bn=True):
    """Returns a copy of `model` for serving, with the same weights.

    The copy computes the same logits but: grouped convolutions run without XLA (see
    SERVING_CONV_IMPLS), every BatchNormalization is folded into its convolution
    (`resnext_tf.fold`; with fold_bn=False it is kept, not synchronized, and with grouped
    convolutions is Keras' own, see `_ServingBottleneck`), every layer runs in `dtype` (a
    mixed-precision model exports a float32 graph unless dtype="bfloat16"), and the classifier
    has no activation.

    Args:
      model: A functional resnext_tf model with its classifier (include_top=True).
      conv_impl: "grouped" (tf.nn.conv2d with groups) or "split".
      dtype: "float32", or "bfloat16" (computes in bfloat16, float32 in and out; needs fold_bn).
      fold_bn: Fold BatchNormalization into the convolutions.

    Returns:
      A new `keras.Model`.

    Raises:
      ValueError: for a model that is not functional or does not end in a Dense classifier,
        or conv_impl="grouped" where TensorFlow does not run grouped convolutions natively.
    """
    if conv_impl not in SERVING_CONV_IMPLS:
        raise ValueError(
            f"Unknown conv_impl; received conv_impl={conv_impl!r}, expected one of "
            f"{SERVING_CONV_IMPLS}."
        )
    if dtype not in fold.DTYPES or (dtype != "float32" and not fold_bn):
        raise ValueError(
            f"dtype must be one of {fold.DTYPES} (bfloat16 with fold_bn=True); received "
            f"dtype={dtype!r}, fold_bn={fold_bn!r}."
        )
    if conv_impl == "grouped" and not tf_native_grouped_conv(inference=True):
        # The library would fall back to Keras' grouped convolution, which needs XLA.
        raise ValueError(
            "conv_impl='grouped' needs TensorFlow's native grouped convolution forward, which "
            "this TensorFlow does not run; received conv_impl='grouped', use conv_impl='split'."
        )
    config = model.get_config()
    outputs = config.get("output_layers") if isinstance(config, dict) else None
    # Keras writes a single output as one [name, node, tensor] triple, several as a list of them.
    if outputs and not isinstance(outputs[0], str):
        outputs = outputs[0] if len(outputs) == 1 else None
    if "layers" not in config or not outputs:
        raise ValueError(
            f"Expected a functional model with one output; received {model.name!r} "
            f"({type(model).__name__})."
        )
    layers = {layer["name"]: layer for layer in config["layers"]}
    output = layers[outputs[0]]
    if output["class_name"] != "Dense":
        raise ValueError(
            "Export needs the classifier (include_top=True); received a model whose output "
            f"layer is {output['class_name']} {output['name']!r}."
        )
    for layer in config["layers"]:
        layer_config = layer["config"]
        for key, value in (("conv_impl", conv_impl), ("sync_bn", False), ("synchronized", False)):
            if key in layer_config:
                layer_config[key] = value
        if "dtype" in layer_config:
            layer_config["dtype"] = "float32"
    output["config"]["activation"] = "linear"
    with keras.saving.custom_object_scope(GROUPED_SERVING_LAYERS if conv_impl == "grouped" else {}):
        clone = keras.Model.from_config(config)
    clone.set_weights(model.get_weights())
    return fold.fold_batchnorm(clone, dtype) if fold_bn else clone


def default_data_config(model):
    """The evaluation DataConfig a model was trained for, read from its stem and input size.

    The ImageNet stem gets the ImageNet evaluation at the model's input size (shorter side to
    the recipe's evaluation resize, centre crop); the CIFAR stem gets CIFAR-10 or
    CIFAR-100 by its number of classes.

    Raises:
      ValueError: for a CIFAR-stem model with neither 10 nor 100 classes (pass a DataConfig).
    """
    size = model.input_shape[1]
    if any(layer.name == "stem_pool" for layer in model.layers):
        return DataConfig("imagenet", image_size=size)
    num_classes = model.output_shape[-1]
    datasets = {10: "cifar10", 100: "cifar100"}
    if num_classes not in datasets:
        raise ValueError(
            f"Cannot tell the CIFAR dataset of a model with num_classes={num_classes}; pass "
            "data_config=DataConfig('cifar10' or 'cifar100')."
        )
    return DataConfig(datasets[num_classes])


def eval_transform(data_config, limits=transforms.DEFAULT_LIMITS):
    """The per-image serving transform: encoded bytes -> float32 [size, size, 3].

    ImageNet: resnext_tf.data's evaluation transform (one centre crop). CIFAR: decode, resize to
    32x32 when the image has another size, then the CIFAR evaluation normalisation. Both raise
    InvalidArgumentError, undecoded, for an image over `limits` (transforms.ImageLimits).
    """
    if not data_config.is_cifar:
        single_crop = dataclasses.replace(data_config, ten_crop=False)
        return functools.partial(transforms.imagenet_eval, cfg=single_crop, limits=limits)
    size = data_config.crop_size

    def cifar(data):
        image = transforms.decode(transforms.checked(data, limits))
        image = transforms.resize(image, size, size, data_config.antialias)
        return transforms.cifar_eval(image, data_config)

    return cifar


def imagenet_class_names():
    """(wnids, labels) of the 1000 ImageNet classes in class-index order."""
    with open(CLASS_INDEX_PATH, encoding="utf-8") as f:
        index = json.load(f)
    rows = [index[str(i)] for i in range(len(index))]
    return [wnid for wnid, _ in rows], [label for _, label in rows]


def _class_names(data_config, num_classes, class_names):
    """{"wnids": [...], "labels": [...]} string tables returned with the top-k classes."""
    if class_names is not None:
        if len(class_names) != num_classes:
            raise ValueError(
                f"class_names must name every class; received {len(class_names)} names for "
                f"{num_classes} classes."
            )
        return {"labels": list(class_names)}
    if data_config.dataset == "imagenet" and num_classes == IMAGENET_CLASSES:
        wnids, labels = imagenet_class_names()
        return {"wnids": wnids, "labels": labels}
    return {}


def _failures(image_bytes, found, limits):
    """The line "image <i>: <reason>" of each image not in `found`, joined by "; ".

    The reason is transforms.check_image's when the image is over the limits, else UNDECODABLE.
    Runs only for a request with a failed image.
    """
    count = tf.size(image_bytes)
    hits = tf.scatter_nd(found[:, None], tf.ones_like(found), [count])
    failed = tf.cast(tf.where(tf.equal(hits, 0))[:, 0], tf.int32)
    checked, reasons = pipeline.map_ignoring_errors(
        (failed, tf.gather(image_bytes, failed)),
        lambda i, data: (i, transforms.check_image(data, limits)),
    )
    reasons = tf.tensor_scatter_nd_update(tf.fill([count], ""), checked[:, None], reasons)
    reasons = tf.gather(reasons, failed)
    reasons = tf.where(tf.equal(reasons, ""), UNDECODABLE, reasons)
    lines = tf.strings.join(["image ", tf.strings.as_string(failed), ": ", reasons])
    return tf.strings.reduce_join(lines, separator="; ")


def decode_images(image_bytes, transform, limits, image_shape):
    """Transforms a batch of encoded images, or fails naming each image that fails.

    Each image runs `transform` in a dataset whose ignore_errors() keeps the request alive
    when an image is damaged or over the limits; then one InvalidArgumentError lists every
    such image by its index and reason (see `_failures`). An empty batch is an
    InvalidArgumentError too (EMPTY_BATCH): the model cannot run on it.

    Returns:
        float32 [N, *image_shape], the images in order.
    """
    count = tf.size(image_bytes)
    with tf.control_dependencies([tf.debugging.Assert(count > 0, [EMPTY_BATCH])]):
        indices = tf.range(count)
    found, images = pipeline.map_ignoring_errors(
        (indices, image_bytes),
        lambda i, data: (i, tf.ensure_shape(transform(data), image_shape)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    complete = tf.equal(tf.size(found), count)
    message = tf.cond(
        complete, lambda: tf.constant(""), lambda: _failures(image_bytes, found, limits)
    )
    with tf.control_dependencies([tf.debugging.Assert(complete, [message])]):
        return tf.ensure_shape(tf.identity(images), [None, *image_shape])


def _signature_functions(model, transform, names, top_k, limits=transforms.DEFAULT_LIMITS):
    """(serve_bytes, predict_images): the Python functions behind the two signatures."""
    tables = {key: tf.constant(values) for key, values in names.items()}
    top_k = min(top_k, model.output_shape[-1])

    def predict_images(images):
        not_empty = tf.debugging.Assert(tf.shape(images)[0] > 0, [EMPTY_BATCH])
        with tf.control_dependencies([not_empty]):
            images = tf.identity(images)
        logits = model(images, training=False)
        probabilities = tf.nn.softmax(logits)
        scores, classes = tf.math.top_k(probabilities, k=top_k)
        outputs = {
            "logits": logits,
            "probabilities": probabilities,
            "classes": classes,
            "scores": scores,
        }
        outputs.update({key: tf.gather(table, classes) for key, table in tables.items()})
        return outputs

    def serve_bytes(image_bytes):
        # A bad image fails the request with InvalidArgument; the server keeps running.
        return predict_images(decode_images(image_bytes, transform, limits, model.input_shape[1:]))

    return serve_bytes, predict_images


def _serving_root(model, serve_bytes, predict_images):
    """(object to save, signatures): the signature functions and every model variable.

    The variables are listed flat, as the tf.Variables the functions read: the object graph
    then reaches each one exactly once, which the session-based loader of TF Serving (and
    saved_model_cli) needs to restore them. Tracking the Keras model itself misses variables
    of nested layers, and keras.export.ExportArchive stores every variable twice.
    """
    root = tf.Module()
    root.model_variables = [variable.value for variable in model.variables]
    root.serve_bytes = tf.function(
        serve_bytes, input_signature=[tf.TensorSpec((None,), tf.string, name=BYTES_INPUT)]
    )
    root.predict_images = tf.function(
        predict_images,
        input_signature=[
            tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=IMAGES_INPUT)
        ],
    )
    signatures = {
        SERVING_SIGNATURE: root.serve_bytes.get_concrete_function(),
        IMAGES_SIGNATURE: root.predict_images.get_concrete_function(),
    }
    return root, signatures


def check_no_xla(export_path):
    """Raises RuntimeError when saved_model.pb contains a function that must run under XLA."""
    with open(os.path.join(export_path, "saved_model.pb"), "rb") as f:
        if XLA_MUST_COMPILE in f.read():
            raise RuntimeError(
                f"{export_path} contains {XLA_MUST_COMPILE.decode()} functions, which stock TF "
                "Serving cannot run."
            )


def sample_jpeg(height=240, width=320):
    """A real JPEG (a colour gradient) for warm-up requests and smoke tests."""
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    image = np.stack([y + 0 * x, x + 0 * y, (x + y) / 2], axis=-1).astype(np.uint8)
    return tf.io.encode_jpeg(image).numpy()


def write_warmup(export_path, model_name, image_bytes):
    """Writes assets.extra/tf_serving_warmup_requests with one serving_default request.

    Needs the tensorflow-serving-api package for the PredictionLog message; without it the
    warm-up file is skipped with a log message (TF Serving then warms up on the first request).

    Returns:
      The path written, or None when skipped.
    """
    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError:
        logger.warning(
            "No TF Serving warm-up file written: the PredictionLog message needs "
            "`pip install tensorflow-serving-api`. The first request will be slower."
        )
        return None
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SERVING_SIGNATURE)
    )
    request.inputs[BYTES_INPUT].CopyFrom(tf.make_tensor_proto([image_bytes]))
    record = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )
    path = os.path.join(export_path, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(record.SerializeToString())
    return path


def next_version(model_base):
    """1 + the highest numeric version directory under `model_base` (1 when there is none)."""
    if not os.path.isdir(model_base):
        return 1
    versions = [int(name) for name in os.listdir(model_base) if name.isdigit()]
    return max(versions, default=0) + 1


def _publish(tmp, final, overwrite):
    """Renames the finished export into place; TF Serving never sees a partial version."""
    if not os.path.exists(final):
        os.rename(tmp, final)  # fails rather than merge if another export got there first
        return
    if not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True to replace it.")
    old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(final))
    os.rename(final, os.path.join(old, "version"))
    os.rename(tmp, final)
    shutil.rmtree(old)


def _version_target(export_dir, model_name, version, overwrite):
    """(model_base, version, final path) after checking the name and version."""
    if not MODEL_NAME.fullmatch(model_name):
        raise ValueError(
            f"Invalid model_name; received model_name={model_name!r}; expected letters, "
            "digits, '_', '.', '-', not starting with a punctuation mark."
        )
    model_base = os.path.join(os.fspath(export_dir), model_name)
    version = next_version(model_base) if version is None else version
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive integer; received version={version!r}.")
    final = os.path.join(model_base, str(version))
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True to replace it.")
    return model_base, version, final


def _check_rgb(model):
    if model.input_shape[-1] != 3:
        # serving_default decodes images to RGB; predict_images alone could take C channels.
        raise ValueError(
            f"Export serves images decoded to RGB and needs a 3-channel model; received a model "
            f"with {model.input_shape[-1]} input channels (input {model.input_shape[1:]})."
        )


def _checked_data_config(served, data_config):
    data_config = data_config or default_data_config(served)
    if served.input_shape[1:] != (data_config.crop_size, data_config.crop_size, 3):
        raise ValueError(
            f"The model input {served.input_shape[1:]} does not match the data config's "
            f"{data_config.crop_size}x{data_config.crop_size} crop."
        )
    return data_config


def _write_version(model_base, version, final, overwrite, write):
    """Runs write(tmp) in a hidden folder beside `final`, then renames it into place."""
    os.makedirs(model_base, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_base)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the server may run as another user
    try:
        write(tmp)
        _publish(tmp, final, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_info(model, data_config, fmt, dtype, names=None):
    """The contents of export_info.json: format, compute dtype, the input contract, classes.

    The input contract is predict_images': float32 [N, size, size, 3] (NHWC, RGB) after the
    evaluation transform, which is spelled out under "preprocessing".
    """
    if data_config.is_cifar:
        mean, std = transforms.CIFAR_MEAN_STD[data_config.dataset]
        preprocessing = {
            "steps": [
                f"decode to RGB; resize to {data_config.crop_size}x{data_config.crop_size} "
                "(bicubic) when the image has another size",
                "x = (pixel - mean) / std per channel, pixels on the 0-255 scale",
            ],
            "mean": list(mean),
            "std": list(std),
        }
    else:
        preprocessing = {
            "steps": [
                "decode to RGB",
                f"resize the shorter side to {data_config.eval_resize} (bicubic, "
                f"{'with' if data_config.antialias else 'no'} antialiasing), the other side "
                "keeping the aspect ratio",
                f"centre crop {data_config.crop_size}x{data_config.crop_size}",
                "x = (pixel / 255 - mean) / std per channel",
            ],
            "eval_resize": data_config.eval_resize,
            "interpolation": "bicubic",
            "antialias": data_config.antialias,
            "mean": list(transforms.IMAGENET_MEAN),
            "std": list(transforms.IMAGENET_STD),
        }
    info = {
        "format": fmt,
        "dtype": dtype,
        "input": {
            "name": IMAGES_INPUT,
            "dtype": "float32",
            "shape": [None, *model.input_shape[1:]],
            "layout": "NHWC",
            "channels": "RGB",
        },
        "output": {"name": LOGITS, "dtype": "float32", "shape": [None, model.output_shape[-1]]},
        "preprocessing": {"dataset": data_config.dataset, **preprocessing},
    }
    if fmt == "openvino":
        info["openvino_plugin_config"] = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[dtype]}
    if names:
        info["classes"] = names
    return info


def _write_info(folder, info):
    with open(os.path.join(folder, INFO_FILE), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)


def export_saved_model(
    model,
    export_dir,
    model_name=None,
    version=None,
    *,
    data_config=None,
    class_names=None,
    top_k=DEFAULT_TOP_K,
    overwrite=False,
    warmup=True,
    conv_impl="grouped",
    image_limits=None,
    dtype="float32",
):
    """Exports a classifier as a TF Serving SavedModel at export_dir/model_name/version.

    The SavedModel is written to a hidden temporary directory next to the version directory
    and renamed into place when complete. BatchNormalization is folded into the convolutions.

    Args:
      model: A resnext_tf model with its classifier (logits or softmax output).
      export_dir: Base directory holding one folder per model name.
      model_name: Name TF Serving serves the model under; `model.name` by default.
      version: Positive integer version; by default one above the highest existing version.
      data_config: The `resnext_tf.data.DataConfig` the model was evaluated with; by default
        derived from the model (see `default_data_config`).
      class_names: Optional label per class, returned for the top-k classes. ImageNet models
        return wnids and labels from the shipped class index without it.
      top_k: How many classes to return per image (at most the number of classes).
      overwrite: Replace an existing version instead of raising FileExistsError.
      warmup: Write assets.extra/tf_serving_warmup_requests (needs tensorflow-serving-api).
      conv_impl: Grouped convolutions in the graph, "grouped" or "split" (SERVING_CONV_IMPLS).
      image_limits: `resnext_tf.data.transforms.ImageLimits` that serving_default checks
        from each image's header before decoding it; transforms.DEFAULT_LIMITS by default.
      dtype: "float32" or "bfloat16" (the model computes in bfloat16; images in and outputs
        out stay float32). A warning is logged where the CPU emulates bfloat16.

    Returns:
      The path of the version directory.

    Raises:
      ValueError: for an invalid name, version, top_k, dtype or model.
      FileExistsError: when the version exists and `overwrite` is False.
    """
    model_name = model_name or model.name
    model_base, version, final = _version_target(export_dir, model_name, version, overwrite)
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer; received top_k={top_k!r}.")
    _check_rgb(model)
    served = serving_model(model, conv_impl, dtype)
    hardware.warn_if_bf16_emulated(dtype)
    data_config = _checked_data_config(served, data_config)
    names = _class_names(data_config, served.output_shape[-1], class_names)
    limits = image_limits or transforms.DEFAULT_LIMITS
    serve_bytes, predict_images = _signature_functions(
        served, eval_transform(data_config, limits), names, top_k, limits
    )
    root, signatures = _serving_root(served, serve_bytes, predict_images)

    def write(tmp):
        tf.saved_model.save(root, tmp, signatures=signatures)
        check_no_xla(tmp)
        _write_info(tmp, export_info(served, data_config, "saved_model", dtype))
        if warmup:
            write_warmup(tmp, model_name, sample_jpeg())

    _write_version(model_base, version, final, overwrite, write)
    logger.info("Exported %s version %d to %s.", model_name, version, final)
    return final


def _rename_onnx_io(path):
    """Names the ONNX graph's input IMAGES_INPUT and its output LOGITS (tf2onnx numbers them)."""
    import onnx

    proto = onnx.load(path)
    graph = proto.graph
    (source,) = graph.output
    if source.name != LOGITS:
        graph.node.append(onnx.helper.make_node("Identity", [source.name], [LOGITS]))
        source.name = LOGITS
    (images,) = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if images.name != IMAGES_INPUT:
        for node in graph.node:
            node.input[:] = [IMAGES_INPUT if n == images.name else n for n in node.input]
        images.name = IMAGES_INPUT
    onnx.save(proto, path)


def _name_openvino_io(source, path):
    """Saves the IR at `source` to `path` (a new file: the reader maps the weights in place)
    with its input named IMAGES_INPUT and its output LOGITS, then deletes `source`."""
    import openvino as ov

    ov_model = ov.Core().read_model(source)
    ov_model.inputs[0].get_tensor().set_names({IMAGES_INPUT})
    ov_model.outputs[0].get_tensor().set_names({LOGITS})
    # save_model would store the weights in float16 by default.
    ov.save_model(ov_model, path, compress_to_fp16=False)
    del ov_model
    for name in (source, os.path.splitext(source)[0] + ".bin"):
        os.remove(name)


def _keras_export(served, fmt, path):
    """Keras' own exporter of `fmt` on the folded float32 model, with a float32 input."""
    spec = [keras.InputSpec(shape=(None, *served.input_shape[1:]), dtype="float32")]
    if fmt == "litert":
        served.export(path, format="litert", verbose=False)
    elif fmt == "onnx":
        served.export(path, format="onnx", input_signature=spec, verbose=False)
        _rename_onnx_io(path)
    else:
        keras_path = os.path.join(os.path.dirname(path), "keras_" + os.path.basename(path))
        served.export(keras_path, format="openvino", input_signature=spec, verbose=False)
        _name_openvino_io(keras_path, path)


def export_model(
    model,
    export_dir,
    model_name=None,
    version=None,
    *,
    fmt="saved_model",
    dtype="float32",
    data_config=None,
    class_names=None,
    overwrite=False,
    conv_impl="grouped",
    **saved_model_kwargs,
):
    """Exports a classifier in one of FORMATS at export_dir/model_name/version.

    "saved_model" is `export_saved_model`. "onnx", "openvino" and "litert" write model.onnx,
    model.xml + model.bin, or model.tflite with Keras' exporter of that format: the folded
    model (`serving_model`) with one float32 input "images" [N, H, W, 3], transformed as
    predict_images expects, and one output "logits"; export_info.json beside it spells out
    that transform and the classes. OpenVINO's precision is chosen where the IR is compiled
    (export_info.json's "openvino_plugin_config" holds the one for `dtype`).

    Args:
      model, export_dir, model_name, version, data_config, class_names, overwrite,
        conv_impl: as `export_saved_model`.
      fmt: One of FORMATS.
      dtype: "float32" or "bfloat16" (BF16_FORMATS only).
      **saved_model_kwargs: More arguments of `export_saved_model` (top_k, warmup,
        image_limits), for fmt="saved_model" only.

    Returns:
      The path of the version directory.

    Raises:
      ValueError: for an unknown format, a dtype the format cannot compute in, or the
        errors of `export_saved_model`.
      ImportError: when the format's optional dependencies are missing (the message names
        the extra to install).
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format; received fmt={fmt!r}, expected one of {FORMATS}.")
    if dtype not in fold.DTYPES:
        raise ValueError(f"Unknown dtype; received dtype={dtype!r}, expected one of {fold.DTYPES}.")
    if dtype == "bfloat16" and fmt not in BF16_FORMATS:
        raise ValueError(
            f"fmt={fmt!r} cannot compute in bfloat16 (its CPU runtime has no bfloat16 "
            f"convolutions); export it in float32, or use one of {BF16_FORMATS} for bfloat16."
        )
    if fmt == "saved_model":
        return export_saved_model(
            model,
            export_dir,
            model_name,
            version,
            data_config=data_config,
            class_names=class_names,
            overwrite=overwrite,
            conv_impl=conv_impl,
            dtype=dtype,
            **saved_model_kwargs,
        )
    if saved_model_kwargs:
        raise ValueError(
            f"{sorted(saved_model_kwargs)} apply to fmt='saved_model' only; received fmt={fmt!r}."
        )
    _require(fmt)
    model_name = model_name or model.name
    model_base, version, final = _version_target(export_dir, model_name, version, overwrite)
    _check_rgb(model)
    served = serving_model(model, conv_impl, "float32")
    hardware.warn_if_bf16_emulated(dtype)
    data_config = _checked_data_config(served, data_config)
    names = _class_names(data_config, served.output_shape[-1], class_names)

    def write(tmp):
        _keras_export(served, fmt, os.path.join(tmp, MODEL_FILES[fmt]))
        _write_info(tmp, export_info(served, data_config, fmt, dtype, names))

    _write_version(model_base, version, final, overwrite, write)
    logger.info("Exported %s version %d (%s, %s) to %s.", model_name, version, fmt, dtype, final)
    return final


def check_export(
    model,
    export_dir,
    model_name=None,
    version=None,
    *,
    fmt="saved_model",
    dtype="float32",
    data_config=None,
    overwrite=False,
    conv_impl="grouped",
):
    """Runs the checks of `export_model` without writing anything, so a run that exports at its
    end fails at its start instead (a training run calls it before its first step).

    Checks the name, version and format, that `export_dir` can be written, the format's
    optional dependencies, and that the serving copy of `model` builds and runs one image in
    a TensorFlow graph, which is where this CPU's kernels and graph optimizer could refuse it.

    Raises:
      ExportError: naming what would make the export fail.
    """
    try:
        _check_target(model, export_dir, model_name, version, fmt, overwrite)
        served = serving_model(model, conv_impl, dtype if fmt == "saved_model" else "float32")
        _checked_data_config(served, data_config)
        image = tf.zeros((1, *served.input_shape[1:]), tf.float32)
        tf.function(lambda x: served(x, training=False))(image)
    except (ValueError, OSError, ImportError, tf.errors.OpError) as e:
        raise ExportError(f"The export would fail: {one_line(e)}") from e


def _check_target(model, export_dir, model_name, version, fmt, overwrite):
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format; received fmt={fmt!r}, expected one of {FORMATS}.")
    if fmt != "saved_model":
        _require(fmt)
    _version_target(export_dir, model_name or model.name, version, overwrite)
    existing = os.path.abspath(os.fspath(export_dir))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(
            f"export_dir={os.fspath(export_dir)!r} cannot be written: {existing} is not a "
            "writable folder."
        )
    _check_rgb(model)


# The modules each format needs, and the setup.py extra that installs them.
FORMAT_MODULES = {
    "onnx": (("tf2onnx", "onnx"), "onnx"),
    "openvino": (("openvino",), "openvino"),
    "litert": (("ai_edge_litert",), "litert"),
}


def _require(fmt):
    import importlib.util

    modules, extra = FORMAT_MODULES[fmt]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"--format={fmt} needs {', '.join(missing)}: pip install 'resnext_tf[{extra}]'."
        )


def parse_args(argv=None):
    from resnext_tf.registry import list_models

    parser = argparse.ArgumentParser(
        prog="python -m resnext_tf.export", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", required=True, choices=list_models(), help="architecture")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--weights", help="weights file (.weights.h5, .keras, .pth, .safetensors, .t7) or name"
    )
    source.add_argument(
        "--model_dir", help="training run directory (latest checkpoint), checkpoint or pointer"
    )
    parser.add_argument("--export_dir", required=True, help="base directory of the exports")
    parser.add_argument("--version", type=int, default=None, help="default: next free version")
    parser.add_argument("--model_name", default=None, help="served name; default: --model")
    parser.add_argument("--num_classes", type=int, default=None, help="default: the variant's")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="saved_model",
        help="saved_model (TF Serving), onnx, openvino (IR) or litert (.tflite)",
    )
    parser.add_argument(
        "--dtype",
        choices=fold.DTYPES,
        default="float32",
        help="compute dtype; bfloat16 (float32 in and out) for saved_model and openvino",
    )
    parser.add_argument("--top_k", type=int, default=DEFAULT_TOP_K)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version")
    parser.add_argument("--no_warmup", action="store_true", help="skip the warm-up requests")
    parser.add_argument(
        "--conv_impl",
        choices=SERVING_CONV_IMPLS,
        default="grouped",
        help="grouped convolutions in the graph; both run without XLA",
    )
    limits = transforms.DEFAULT_LIMITS
    parser.add_argument(
        "--max_pixels",
        type=int,
        default=limits.max_pixels,
        help="largest width x height served (a GIF: of all its frames), read from the header",
    )
    parser.add_argument(
        "--max_aspect",
        type=float,
        default=limits.max_aspect,
        help="largest longer side / shorter side served",
    )
    parser.add_argument(
        "--max_bytes", type=int, default=limits.max_bytes, help="largest encoded image served"
    )
    args = parser.parse_args(argv)
    if args.dtype == "bfloat16" and args.format not in BF16_FORMATS:
        parser.error(
            f"--format={args.format} cannot compute in bfloat16 (its CPU runtime has no bfloat16 "
            f"convolutions); use --dtype=float32, or --format in {BF16_FORMATS}."
        )
    try:
        args.image_limits = transforms.ImageLimits(args.max_pixels, args.max_aspect, args.max_bytes)
    except ValueError as e:
        parser.error(str(e))
    return args


@user_errors_exit  # a bad weights file or model_dir: one line, exit 2
def main(argv=None):
    """Builds the model, loads its weights, exports it; returns the process exit code."""
    from resnext_tf.registry import create_model, model_kwargs

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    num_classes = args.num_classes or model_kwargs(args.model)["num_classes"]
    if args.model_dir:
        # The trainer's checkpoints record their classifier size.
        from resnext_tf.training import modeling

        if args.num_classes is None:
            num_classes = modeling.source_num_classes(args.model_dir, default=num_classes)
        model = create_model(args.model, num_classes=num_classes)
        modeling.load_run_or_weights(model, args.model_dir)
    else:
        from resnext_tf.weights import load_weights

        model = create_model(args.model, num_classes=num_classes)
        load_weights(model, args.weights)
    saved_model_kwargs = {}
    if args.format == "saved_model":
        saved_model_kwargs = dict(
            top_k=args.top_k, warmup=not args.no_warmup, image_limits=args.image_limits
        )
    path = export_model(
        model,
        args.export_dir,
        args.model_name or args.model,
        args.version,
        fmt=args.format,
        dtype=args.dtype,
        overwrite=args.overwrite,
        conv_impl=args.conv_impl,
        **saved_model_kwargs,
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
