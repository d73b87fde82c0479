"""Calibrated post-training INT8 of the float-input exports (docs/export.md, "INT8").

Each format's own tool quantizes the folded float32 model the float32 export writes, calibrated
on images after the model's evaluation transform (`resnext_tf.data.calibration`):
  * openvino: NNCF on the float32 IR, preset PERFORMANCE (symmetric), CPU target, weights
    per output channel, activations per tensor. NNCF leaves the model output unquantized, so
    the logits are float; every convolution and the classifier run in INT8.
  * onnx: ONNX Runtime's quantize_static, QDQ, uint8 activations and int8 weights per output
    channel (the U8S8 kernels of x86), MinMax calibration; the classifier (its MatMul and
    what follows it) is excluded, so the logits are not on an 8-bit grid.
  * litert: the TFLite converter's full-integer quantization (representative dataset),
    float32 input and output, with the classifier denylisted through
    tf.lite.experimental.QuantizationDebugger for the same reason.
The inputs and outputs stay float32 "images" and "logits", as in the float32 exports.
"""

import contextlib
import functools
import logging
import os
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from resnext_tf.backend_ops import pointwise_as_convolutions
from resnext_tf.export import formats
from resnext_tf.export.serving import IMAGES_INPUT

INT8_FORMATS = ("onnx", "openvino", "litert")
# The modules each format's quantization needs beyond its float32 export, and the extra.
QUANTIZE_MODULES = {"openvino": (("nncf",), "int8")}
# Calibration batches: ONNX Runtime runs this many images a call.
ONNX_CALIBRATION_BATCH = 8


def require(fmt):
    """Raises ImportError naming the extra to install where `fmt`'s INT8 tools are missing."""
    formats.require(fmt)
    if fmt in QUANTIZE_MODULES:
        formats.require_modules(*QUANTIZE_MODULES[fmt], what=f"--format={fmt} --precision=int8")


def _openvino(float_xml, path, images):
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        QuantizationParameters,
    )

    model = ov.Core().read_model(float_xml)
    # One dataset item per image (batch 1): NNCF's subset_size counts items.
    dataset = nncf.Dataset(list(images), lambda image: {IMAGES_INPUT: image[None]})
    quantized = nncf.quantize(
        model,
        dataset,
        preset=nncf.QuantizationPreset.PERFORMANCE,
        target_device=nncf.TargetDevice.CPU,
        subset_size=len(images),
        advanced_parameters=AdvancedQuantizationParameters(
            weights_quantization_params=QuantizationParameters(per_channel=True)
        ),
    )
    # compress_to_fp16=False keeps the float constants (biases, scales) float32.
    ov.save_model(quantized, path, compress_to_fp16=False)
    return {
        "tool": f"nncf {nncf.__version__}",
        "settings": "preset PERFORMANCE (symmetric), target CPU, weights per channel, "
        "activations per tensor",
        "float": "the output: NNCF quantizes no model output, so the logits are float32",
    }


def classifier_nodes(graph):
    """Names of the ONNX graph's last MatMul/Gemm (the classifier) and every node after it."""
    nodes = list(graph.node)
    last = max(i for i, n in enumerate(nodes) if n.op_type in ("MatMul", "Gemm"))
    after, tensors = [nodes[last].name], set(nodes[last].output)
    for node in nodes[last + 1 :]:
        if tensors & set(node.input):
            after.append(node.name)
            tensors |= set(node.output)
    return [name for name in after if name]


def _onnx(float_onnx, path, images):
    import onnx
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class ImagesReader(CalibrationDataReader):
        """The calibration images, ONNX_CALIBRATION_BATCH at a time."""

        def __init__(self):
            step = ONNX_CALIBRATION_BATCH
            self.batches = [images[i : i + step] for i in range(0, len(images), step)]
            self.rewind()

        def get_next(self):
            return next(self.iterator, None)

        def rewind(self):
            self.iterator = iter({IMAGES_INPUT: batch} for batch in self.batches)

    reader = ImagesReader()
    excluded = classifier_nodes(onnx.load(float_onnx, load_external_data=False).graph)
    quantize_static(
        float_onnx,
        path,
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return {
        "tool": f"onnxruntime {onnxruntime.__version__}",
        "settings": "quantize_static, QDQ, activations uint8 per tensor, weights int8 per "
        "channel, reduce_range off, MinMax calibration",
        "float": f"the classifier: {', '.join(excluded)}",
    }


def _litert_converter(served, saved_model_dir):
    """The TFLiteConverter Keras' LiteRT exporter builds (ExportArchive, then SavedModel)."""
    spec = tf.TensorSpec((None, *served.input_shape[1:]), tf.float32)
    archive = keras.export.ExportArchive()
    archive.track(served)
    archive.add_endpoint(
        "serve", functools.partial(served.__call__, training=False), input_signature=[spec]
    )
    archive.write_out(saved_model_dir, verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS,
        tf.lite.OpsSet.SELECT_TF_OPS,
    ]
    converter.experimental_enable_resource_variables = True
    return converter


def _litert(served, path, images):
    from ai_edge_litert.interpreter import Interpreter

    def representative():
        for image in images:
            yield [image[None]]

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # The debugger runs tf.lite's own (deprecated) Interpreter on the calibrated model.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        converter = _litert_converter(served, tmp)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=representative
        )
    # The calibrated float model's output is the classifier's output tensor (the last op).
    (output,) = Interpreter(model_content=debugger.calibrated_model).get_output_details()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=[output["name"]]
        )
        content = debugger.get_nondebug_quantized_model()
    with open(path, "wb") as f:
        f.write(content)
    return {
        "tool": f"tensorflow {tf.__version__} TFLiteConverter",
        "settings": "full-integer post-training quantization (representative dataset), int8 "
        "activations and weights per channel, float32 input and output",
        "float": f"the classifier (denylisted node {output['name']})",
    }


@contextlib.contextmanager
def _quiet_tf_logs():
    """TensorFlow's converter logs each step at INFO; keep the export's own log readable."""
    level = tf.get_logger().level
    tf.get_logger().setLevel(logging.ERROR)
    try:
        yield
    finally:
        tf.get_logger().setLevel(level)


def write_int8(served, fmt, folder, images):
    """Writes `fmt`'s INT8 model file into `folder`, calibrated on `images` (float32
    [N, H, W, 3], transformed); returns the quantization record of export_info.json."""
    path = os.path.join(folder, formats.MODEL_FILES[fmt])
    images = np.ascontiguousarray(images, np.float32)
    with _quiet_tf_logs():
        if fmt == "litert":
            with pointwise_as_convolutions():
                return _litert(served, path, images)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            float_path = os.path.join(tmp, formats.MODEL_FILES[fmt])
            formats.keras_export(served, fmt, float_path)
            quantize = _openvino if fmt == "openvino" else _onnx
            return quantize(float_path, path, images)


def agreement(logits, reference):
    """Top-1 agreement of INT8 logits with the float32 model's, and the largest logit error."""
    return {
        "images": len(reference),
        "top1_agreement": round(float(np.mean(logits.argmax(1) == reference.argmax(1))), 4),
        "max_abs_logit_error": round(float(np.abs(logits - reference).max()), 4),
        "max_abs_logit": round(float(np.abs(reference).max()), 4),
    }
