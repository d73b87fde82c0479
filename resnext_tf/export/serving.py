"""The serving graph: the model rewritten for inference, and the SavedModel's signatures.

serving_default takes encoded images (`image_bytes`), checked against the image limits from
their headers and transformed in the graph; a bad image fails the request with InvalidArgument
naming it ("image 3: ..."). predict_images takes transformed float32 `images`. Their outputs are
listed in docs/export.md, "Signatures"; grouped convolutions run without XLA.
"""

import logging
import os

import keras
import numpy as np
import tensorflow as tf

from resnext_tf import fold
from resnext_tf.backend_ops import tf_native_grouped_conv
from resnext_tf.data import decode
from resnext_tf.data.unreadable import map_ignoring_errors
from resnext_tf.layers import Bottleneck

logger = logging.getLogger(__name__)

SERVING_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "predict_images"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
LOGITS = "logits"
DEFAULT_TOP_K = 5
# TF Serving replays the PredictionLog records of this file before it serves a new version.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# The attribute of functions that only run under XLA; a graph with it fails on stock TF Serving.
XLA_MUST_COMPILE = b"_XlaMustCompile"
# Errors of serving_default, after "image <index>: " where they concern one image.
EMPTY_BATCH = "empty batch: expected at least 1 image"
UNDECODABLE = "cannot be decoded (damaged, or not a JPEG, PNG, GIF, BMP or WebP image)"

# Grouped convolutions in the exported graph: "grouped", one native tf.nn.conv2d a layer (every
# TensorFlow runs it forward, so the graph does not depend on the exporting CPU), or "split".
SERVING_CONV_IMPLS = ("grouped", "split")


class _ServingBottleneck(Bottleneck):
    """Bottleneck with Keras' BatchNormalization, for graphs with grouped convolutions.

    Without oneDNN, TensorFlow fuses Conv2D + FusedBatchNormV3 into a kernel that rejects groups.
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
    """Returns a copy of `model` for serving, with the same weights and logits.

    Grouped convolutions run without XLA, BatchNormalization is folded (or, with fold_bn=False,
    kept unsynchronized; see `_ServingBottleneck`), every layer runs in `dtype`, and the
    classifier has no activation.

    Args:
      model: A functional resnext_tf model with its classifier (include_top=True).
      conv_impl: One of SERVING_CONV_IMPLS.
      dtype: "float32", or "bfloat16" (float32 in and out; needs fold_bn).
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


def class_tables(contract):
    """{"labels": [...], "wnids": [...]}: the class names the contract knows."""
    names = {"labels": contract.labels, "wnids": contract.wnids}
    return {key: list(values) for key, values in names.items() if values}


def _failures(image_bytes, found, limits):
    """The line "image <i>: <reason>" of each image not in `found`, joined by "; "; the reason
    is check_image's, else UNDECODABLE."""
    count = tf.size(image_bytes)
    hits = tf.scatter_nd(found[:, None], tf.ones_like(found), [count])
    failed = tf.cast(tf.where(tf.equal(hits, 0))[:, 0], tf.int32)
    checked, reasons = map_ignoring_errors(
        (failed, tf.gather(image_bytes, failed)),
        lambda i, data: (i, decode.check_image(data, limits)),
    )
    reasons = tf.tensor_scatter_nd_update(tf.fill([count], ""), checked[:, None], reasons)
    reasons = tf.gather(reasons, failed)
    reasons = tf.where(tf.equal(reasons, ""), UNDECODABLE, reasons)
    lines = tf.strings.join(["image ", tf.strings.as_string(failed), ": ", reasons])
    return tf.strings.reduce_join(lines, separator="; ")


def decode_images(image_bytes, transform, limits, image_shape):
    """Transforms a batch of encoded images, or fails naming each image that fails.

    Failing images are skipped (ignore_errors) so that one InvalidArgumentError lists them all
    (`_failures`); an empty batch fails too (EMPTY_BATCH).

    Returns:
      float32 [N, *image_shape], the images in order.
    """
    count = tf.size(image_bytes)
    with tf.control_dependencies([tf.debugging.Assert(count > 0, [EMPTY_BATCH])]):
        indices = tf.range(count)
    found, images = map_ignoring_errors(
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


def signature_functions(model, transform, names, top_k, limits=decode.DEFAULT_LIMITS):
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
        outputs = dict(logits=logits, probabilities=probabilities, classes=classes, scores=scores)
        outputs.update({key: tf.gather(table, classes) for key, table in tables.items()})
        return outputs

    def serve_bytes(image_bytes):
        # A bad image fails the request with InvalidArgument; the server keeps running.
        return predict_images(decode_images(image_bytes, transform, limits, model.input_shape[1:]))

    return serve_bytes, predict_images


def serving_root(model, serve_bytes, predict_images):
    """(object to save, signatures): the signature functions and every model variable.

    Listed flat, the object graph reaches each variable exactly once, as TF Serving's
    session-based loader needs; tracking the Keras model misses nested layers' variables, and
    keras.export.ExportArchive stores each twice.
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
    """Writes WARMUP_FILE with one serving_default request (needs tensorflow-serving-api).

    Returns:
      The path written, or None when skipped (the first request then warms up).
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
