"""Exports for serving: a TF Serving SavedModel, ONNX, OpenVINO IR and LiteRT.

    python -m resnext_tf.export --model=resnext50_32x4d --weights=imagenet \
        --export_dir=/tmp/serving --version=1 [--format=saved_model] [--dtype=bfloat16]

writes /tmp/serving/resnext50_32x4d/1/, the layout TF Serving and OpenVINO Model Server poll
(--model_base_path points at /tmp/serving/resnext50_32x4d). Every format folds BatchNormalization
into the convolutions (`resnext_tf.fold`); --dtype=bfloat16 computes in bfloat16 with float32
images in and float32 logits out. The SavedModel's signatures are described in
`resnext_tf.export.serving`, the float-input formats in `resnext_tf.export.formats`. Every
export reads the model's data contract (`resnext_tf.contract`): its evaluation transform and
class names.
"""

import logging
import os
import re
import shutil
import tempfile

import tensorflow as tf

from resnext_tf import contract as contracts
from resnext_tf import fileio, fold, hardware
from resnext_tf.data import decode, evaluation
from resnext_tf.errors import ExportError, one_line
from resnext_tf.export import formats
from resnext_tf.export.serving import (  # noqa: F401 (the package's public names)
    BYTES_INPUT,
    DEFAULT_TOP_K,
    EMPTY_BATCH,
    IMAGES_INPUT,
    IMAGES_SIGNATURE,
    LOGITS,
    SERVING_CONV_IMPLS,
    SERVING_SIGNATURE,
    UNDECODABLE,
    WARMUP_FILE,
    check_no_xla,
    class_tables,
    sample_jpeg,
    serving_model,
    serving_root,
    signature_functions,
    write_warmup,
)

logger = logging.getLogger(__name__)

FORMATS = ("saved_model", "onnx", "openvino", "litert")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# ONNX Runtime's and LiteRT's CPU kernels have no bfloat16 convolutions; OpenVINO chooses its
# precision when it compiles the model (INFERENCE_PRECISION_HINT: bf16 by default on CPUs with
# AVX512-BF16 or AMX, f32 on request), so its IR is the same float32 graph for both dtypes.
BF16_FORMATS = ("saved_model", "openvino")


def model_contract(model, data_config=None, class_names=None):
    """The DataContract an export of `model` serves: `data_config` (a DataContract, or a
    resnext_tf.data.DataConfig) or else the contract the model carries, with `class_names`
    (one per class) in place of its names.

    Raises:
      ValueError: when the model carries no contract and none is given, when the names do not
        name every class, or when the model's input is not the contract's size.
    """
    num_classes = model.output_shape[-1]
    if data_config is None:
        contract = contracts.of_model(model)
        if contract is None:
            raise ValueError(
                f"{model.name} carries no data contract (models of create_model, the "
                "applications constructors and training runs do); pass data_config="
                "resnext_tf.contract.DataContract(dataset, image_size) for a model of "
                "build_resnext."
            )
    elif isinstance(data_config, contracts.DataContract):
        contract = data_config
    else:
        contract = contracts.DataContract.for_dataset(
            data_config.dataset,
            num_classes,
            data_config.crop_size,
            eval_resize=data_config.eval_resize,
            antialias=data_config.antialias,
        )
    if class_names is not None:
        contract = contract.with_labels(class_names)
    contract.check_classes(num_classes)
    size = contract.image_size
    if tuple(model.input_shape[1:]) != (size, size, 3):
        raise ValueError(
            f"The model input {model.input_shape[1:]} does not match the data contract's "
            f"{size}x{size} RGB images."
        )
    return contract


def next_version(model_base):
    """1 + the highest numeric version directory under `model_base` (1 when there is none)."""
    if not os.path.isdir(model_base):
        return 1
    versions = [int(name) for name in os.listdir(model_base) if name.isdigit()]
    return max(versions, default=0) + 1


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


def _write_version(model_base, version, final, overwrite, write):
    """Runs write(tmp) in a hidden folder beside `final`, then publishes it: TF Serving never
    sees a partial version."""
    os.makedirs(model_base, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f"{fileio.TMP_PREFIX}{version}-", dir=model_base)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the server may run as another user
    try:
        write(tmp)
        fileio.fsync_tree(tmp)
        fileio.publish_dir(tmp, final, replace=overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_info(folder, info):
    fileio.write_json_atomic(os.path.join(folder, formats.INFO_FILE), info)


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
      data_config: The model's `resnext_tf.contract.DataContract` (or a
        `resnext_tf.data.DataConfig`); by default the contract the model carries (see
        `model_contract`).
      class_names: Optional label per class, returned for the top-k classes in place of the
        contract's names.
      top_k: How many classes to return per image (at most the number of classes).
      overwrite: Replace an existing version instead of raising FileExistsError.
      warmup: Write assets.extra/tf_serving_warmup_requests (needs tensorflow-serving-api).
      conv_impl: Grouped convolutions in the graph, "grouped" or "split" (SERVING_CONV_IMPLS).
      image_limits: `resnext_tf.data.config.ImageLimits` that serving_default checks from
        each image's header before decoding it; decode.DEFAULT_LIMITS by default.
      dtype: "float32" or "bfloat16" (the model computes in bfloat16; images in and outputs
        out stay float32). A warning is logged where the CPU emulates bfloat16.

    Returns:
      The path of the version directory.

    Raises:
      ValueError: for an invalid name, version, top_k, dtype, model or contract.
      FileExistsError: when the version exists and `overwrite` is False.
    """
    model_name = model_name or model.name
    model_base, version, final = _version_target(export_dir, model_name, version, overwrite)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer; received top_k={top_k!r}.")
    _check_rgb(model)
    served = serving_model(model, conv_impl, dtype)
    contract = model_contract(model, data_config, class_names)
    hardware.warn_if_bf16_emulated(dtype)
    limits = image_limits or decode.DEFAULT_LIMITS
    transform = evaluation.eval_transform(contract, limits)
    serve_bytes, predict_images = signature_functions(
        served, transform, class_tables(contract), top_k, limits
    )
    root, signatures = serving_root(served, serve_bytes, predict_images)

    def write(tmp):
        tf.saved_model.save(root, tmp, signatures=signatures)
        check_no_xla(tmp)
        _write_info(tmp, formats.export_info(served, contract, "saved_model", dtype))
        if warmup:
            write_warmup(tmp, model_name, sample_jpeg())

    _write_version(model_base, version, final, overwrite, write)
    logger.info("Exported %s version %d to %s.", model_name, version, final)
    return final


def _check_format(fmt, dtype):
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format; received fmt={fmt!r}, expected one of {FORMATS}.")
    if dtype not in fold.DTYPES:
        raise ValueError(f"Unknown dtype; received dtype={dtype!r}, expected one of {fold.DTYPES}.")
    if dtype == "bfloat16" and fmt not in BF16_FORMATS:
        raise ValueError(
            f"fmt={fmt!r} cannot compute in bfloat16 (its CPU runtime has no bfloat16 "
            f"convolutions); export it in float32, or use one of {BF16_FORMATS} for bfloat16."
        )
    if fmt != "saved_model":
        formats.require(fmt)


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
    model.xml + model.bin, or model.tflite with Keras' exporter of that format (see
    `resnext_tf.export.formats`); export_info.json beside it spells out the input contract
    and holds the model's data contract. OpenVINO's precision is chosen where the IR is
    compiled (export_info.json's "openvino_plugin_config" holds the one for `dtype`).

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
    _check_format(fmt, dtype)
    common = dict(data_config=data_config, class_names=class_names, overwrite=overwrite)
    if fmt == "saved_model":
        return export_saved_model(
            model, export_dir, model_name, version, conv_impl=conv_impl, dtype=dtype,
            **common, **saved_model_kwargs,
        )  # fmt: skip
    if saved_model_kwargs:
        raise ValueError(
            f"{sorted(saved_model_kwargs)} apply to fmt='saved_model' only; received fmt={fmt!r}."
        )
    model_name = model_name or model.name
    model_base, version, final = _version_target(export_dir, model_name, version, overwrite)
    _check_rgb(model)
    served = serving_model(model, conv_impl, "float32")
    contract = model_contract(model, data_config, class_names)
    hardware.warn_if_bf16_emulated(dtype)

    def write(tmp):
        formats.keras_export(served, fmt, os.path.join(tmp, formats.MODEL_FILES[fmt]))
        _write_info(tmp, formats.export_info(served, contract, fmt, dtype))

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
    end fails at its start instead (run_cifar.py and run_imagenet.py call it before the first
    training step).

    Checks the name, version, format and dtype, that `export_dir` can be written, the
    format's optional dependencies, the data contract, and that the serving copy of `model`
    builds and runs one image in a TensorFlow graph, which is where this CPU's kernels and
    graph optimizer could refuse it.

    Raises:
      ExportError: naming what would make the export fail.
    """
    try:
        _check_format(fmt, dtype)
        _version_target(export_dir, model_name or model.name, version, overwrite)
        _check_writable(export_dir)
        _check_rgb(model)
        served = serving_model(model, conv_impl, dtype if fmt == "saved_model" else "float32")
        model_contract(model, data_config)
        image = tf.zeros((1, *served.input_shape[1:]), tf.float32)
        tf.function(lambda x: served(x, training=False))(image)
    except (ValueError, OSError, ImportError, tf.errors.OpError) as e:
        raise ExportError(f"The export would fail: {one_line(e)}") from e


def _check_writable(export_dir):
    existing = os.path.abspath(os.fspath(export_dir))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(
            f"export_dir={os.fspath(export_dir)!r} cannot be written: {existing} is not a "
            "writable folder."
        )
