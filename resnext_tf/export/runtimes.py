"""The float-input exports run in their own runtimes: ONNX Runtime, OpenVINO, LiteRT.

`open_export(path)` finds an export's version folder (a version folder, or a model base: its
highest version), its format (from the model file it holds) and its export_info.json; `runtime`
then returns a callable from transformed float32 images [N, H, W, 3] to float32 logits
[N, classes], for float32 and INT8 exports alike. predict runs exports this way, and the INT8
export its agreement check.
"""

import dataclasses
import json
import os

import numpy as np

from resnext_tf import fileio
from resnext_tf.export.formats import INFO_FILE, MODEL_FILES
from resnext_tf.export.serving import IMAGES_INPUT, LOGITS

SAVED_MODEL_FILE = "saved_model.pb"
# export_info.json is a few kilobytes; a larger one is not ours.
INFO_MAX_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class Export:
    """An export's version folder, its format and its export_info.json (None where absent)."""

    path: str
    fmt: str
    info: dict | None


def version_folder(path):
    """`path`, or its highest numeric version folder when it is a model base."""
    if not os.path.isdir(path) or _format_of(path):
        return path
    versions = [n for n in os.listdir(path) if n.isdigit() and os.path.isdir(os.path.join(path, n))]
    return os.path.join(path, max(versions, key=int)) if versions else path


def _format_of(folder):
    files = {"saved_model": SAVED_MODEL_FILE, **MODEL_FILES}
    found = [fmt for fmt, name in files.items() if os.path.isfile(os.path.join(folder, name))]
    return found[0] if len(found) == 1 else None


def open_export(path):
    """The Export at `path` (a version folder or a model base).

    Raises:
      ValueError: where the folder holds no export of resnext_tf.export (or several model
        files), or a float-input export lacks a readable export_info.json.
    """
    folder = version_folder(os.fspath(path))
    fmt = _format_of(folder) if os.path.isdir(folder) else None
    if fmt is None:
        expected = ", ".join([SAVED_MODEL_FILE, *MODEL_FILES.values()])
        raise ValueError(
            f"{folder} holds no export: expected one of {expected} (in it or in its highest "
            "numeric version folder)."
        )
    info_path = os.path.join(folder, INFO_FILE)
    info = None
    if os.path.isfile(info_path) or fmt != "saved_model":
        try:
            # Outside input: a regular file of bounded size (a FIFO would block, a device never
            # ends), not followed through a symbolic link.
            data = fileio.read_limited(info_path, INFO_MAX_BYTES, follow_symlinks=False)
            info = json.loads(data.decode("utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"Cannot read {info_path}: {e}") from e
        if not isinstance(info, dict) or info.get("format", fmt) != fmt:
            raise ValueError(f"{info_path} does not describe the {fmt} model beside it.")
    return Export(folder, fmt, info)


def onnx_runtime(export, threads=None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(
        os.path.join(export.path, MODEL_FILES["onnx"]), options, providers=["CPUExecutionProvider"]
    )
    return lambda images: session.run([LOGITS], {IMAGES_INPUT: images})[0]


def openvino_runtime(export, threads=None):
    import openvino

    config = dict((export.info or {}).get("openvino_plugin_config", {}))
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = openvino.Core().compile_model(
        os.path.join(export.path, MODEL_FILES["openvino"]), "CPU", config
    )
    request = compiled.create_infer_request()
    return lambda images: request.infer({IMAGES_INPUT: images})[LOGITS].copy()


def litert_runtime(export, threads=None):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(os.path.join(export.path, MODEL_FILES["litert"]), num_threads=threads)
    (inputs,) = interpreter.get_input_details()
    (outputs,) = interpreter.get_output_details()
    shape = [None]

    def run(images):
        if shape[0] != images.shape:  # the interpreter is sized for one batch shape at a time
            interpreter.resize_tensor_input(inputs["index"], images.shape)
            interpreter.allocate_tensors()
            shape[0] = images.shape
        interpreter.set_tensor(inputs["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(outputs["index"])

    return run


RUNTIMES = {"onnx": onnx_runtime, "openvino": openvino_runtime, "litert": litert_runtime}


def runtime(export, threads=None):
    """logits(images) of a float-input Export in its runtime (float32 in and out).

    Raises:
      ValueError: for a SavedModel (predict runs its serving signature instead).
    """
    if export.fmt not in RUNTIMES:
        raise ValueError(f"{export.path} is a {export.fmt}; expected one of {sorted(RUNTIMES)}.")
    run = RUNTIMES[export.fmt](export, threads)
    return lambda images: np.asarray(run(np.ascontiguousarray(images, np.float32)), np.float32)
