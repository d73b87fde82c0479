"""The float-input formats (ONNX, OpenVINO IR, LiteRT) through Keras' own exporters.

Each holds the serving model with one float32 input "images" [N, H, W, 3], already transformed,
and one output "logits"; export_info.json spells out that contract.
"""

import importlib.util
import os

import keras

from resnext_tf.backend_ops import pointwise_as_convolutions
from resnext_tf.export.serving import IMAGES_INPUT, LOGITS

# The model file each float-input format writes into the version directory.
MODEL_FILES = {"onnx": "model.onnx", "openvino": "model.xml", "litert": "model.tflite"}
# Beside every export: the input contract of the float-input formats, the compute dtype.
INFO_FILE = "export_info.json"
OPENVINO_PRECISION = {"float32": "f32", "bfloat16": "bf16"}
# The modules each format needs, and the setup.py extra that installs them.
FORMAT_MODULES = {
    "onnx": (("tf2onnx", "onnx"), "onnx"),
    "openvino": (("openvino",), "openvino"),
    "litert": (("ai_edge_litert",), "litert"),
}


def require_modules(modules, extra, what):
    """Raises ImportError naming the extra to install where one of `modules` is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"{what} needs {', '.join(missing)}: pip install 'resnext_tf[{extra}]'.")


def require(fmt):
    """Raises ImportError naming the extra to install where `fmt`'s modules are missing."""
    require_modules(*FORMAT_MODULES[fmt], what=f"--format={fmt}")


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
    with IMAGES_INPUT and LOGITS named, then deletes `source`."""
    import openvino as ov

    ov_model = ov.Core().read_model(source)
    ov_model.inputs[0].get_tensor().set_names({IMAGES_INPUT})
    ov_model.outputs[0].get_tensor().set_names({LOGITS})
    # save_model would store the weights in float16 by default.
    ov.save_model(ov_model, path, compress_to_fp16=False)
    del ov_model
    for name in (source, os.path.splitext(source)[0] + ".bin"):
        os.remove(name)


def keras_export(served, fmt, path):
    """Keras' own exporter of `fmt` on the folded float32 model, with a float32 input and 1x1
    convolutions as convolutions (`tf_ops.pointwise_as_convolutions`)."""
    with pointwise_as_convolutions():
        _keras_export(served, fmt, path)


def _keras_export(served, fmt, path):
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


def export_info(model, contract, fmt, dtype, precision=None):
    """export_info.json: format, dtype, precision (`dtype`, or "int8" for a quantized export,
    whose float parts compute in `dtype`), input and output, the evaluation transform spelt
    out for other languages, and the data contract (`DataContract.from_json` reads it)."""
    size = f"{contract.image_size}x{contract.image_size}"
    mean, std = contract.recipe.mean, contract.recipe.std
    if contract.is_cifar:
        steps = [
            f"decode to RGB; resize to {size} (bicubic) when the image has another size",
            "x = (pixel - mean) / std per channel, pixels on the 0-255 scale",
        ]
    else:
        steps = [
            "decode to RGB",
            f"resize the shorter side to {contract.eval_resize} (bicubic, "
            f"{'with' if contract.antialias else 'no'} antialiasing), the other side keeping "
            "the aspect ratio",
            f"centre crop {size}",
            "x = (pixel / 255 - mean) / std per channel",
        ]
    info = {
        "format": fmt,
        "dtype": dtype,
        "precision": precision or dtype,
        "input": {
            "name": IMAGES_INPUT,
            "dtype": "float32",
            "shape": [None, *model.input_shape[1:]],
            "layout": "NHWC",
            "channels": "RGB",
        },
        "output": {"name": LOGITS, "dtype": "float32", "shape": [None, model.output_shape[-1]]},
        "preprocessing": {"steps": steps, "mean": list(mean), "std": list(std)},
        "contract": contract.to_json(),
    }
    if fmt == "openvino":
        info["openvino_plugin_config"] = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[dtype]}
    return info
