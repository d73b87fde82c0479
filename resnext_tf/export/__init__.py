"""Exports for serving: a TF Serving SavedModel, ONNX, OpenVINO IR and LiteRT (docs/export.md).

Every format folds BatchNormalization into the convolutions (`resnext_tf.fold`) and serves the
model's data contract (`resnext_tf.contract`). The SavedModel's signatures are in
`resnext_tf.export.serving`, the float-input formats in `resnext_tf.export.formats`.
"""

import logging
import os
import re
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from resnext_tf import contract as contracts
from resnext_tf import fileio, fold, hardware
from resnext_tf.data import calibration, decode, evaluation
from resnext_tf.errors import ExportError, one_line
from resnext_tf.export import formats, quantize, runtimes
from resnext_tf.export.quantize import INT8_FORMATS
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
# ONNX Runtime's and LiteRT's CPU kernels have no bfloat16 convolutions; OpenVINO picks its
# precision when it compiles the IR (INFERENCE_PRECISION_HINT), so one float32 IR serves both.
BF16_FORMATS = ("saved_model", "openvino")
# float32: as `dtype` says (float32 or bfloat16); int8: calibrated INT8 (INT8_FORMATS only).
PRECISIONS = ("float32", "int8")
# An INT8 export agreeing less often with its float32 model on the held-out images is logged
# as a warning.
AGREEMENT_WARNING = 0.98


def model_contract(model, data_config=None, class_names=None):
    """The DataContract an export serves: `data_config` (a DataContract or a DataConfig) or the
    model's own, with `class_names` (one per class) in place of its names.

    Raises:
      ValueError: without a contract, for names that miss classes, or an input of another size.
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
    """Runs write(tmp) in a hidden folder, then renames it to `final`: no partial version."""
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

    Args:
      model: A resnext_tf model with its classifier (logits or softmax output).
      export_dir: Base directory holding one folder per model name.
      model_name: Name TF Serving serves the model under; `model.name` by default.
      version: Positive integer version; by default one above the highest existing version.
      data_config, class_names: See `model_contract`.
      top_k: How many classes to return per image (at most the number of classes).
      overwrite: Replace an existing version instead of raising FileExistsError.
      warmup: Write assets.extra/tf_serving_warmup_requests (needs tensorflow-serving-api).
      conv_impl: One of SERVING_CONV_IMPLS.
      image_limits: `ImageLimits` checked from each image's header before decoding;
        decode.DEFAULT_LIMITS by default.
      dtype: "float32" or "bfloat16" (compute only: images in and outputs out stay float32).

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


def int8_refusal(fmt):
    """Why `fmt` has no INT8 export (one line), or None where it has one."""
    if fmt in INT8_FORMATS:
        return None
    return (
        f"--format={fmt} has no INT8 export (TensorFlow has no fast INT8 CPU path for this "
        f"graph); INT8 is written for --format in {INT8_FORMATS}."
    )


def _check_format(fmt, dtype, precision="float32"):
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format; received fmt={fmt!r}, expected one of {FORMATS}.")
    if dtype not in fold.DTYPES:
        raise ValueError(f"Unknown dtype; received dtype={dtype!r}, expected one of {fold.DTYPES}.")
    if precision not in PRECISIONS:
        raise ValueError(
            f"Unknown precision; received precision={precision!r}, expected one of {PRECISIONS}."
        )
    if dtype == "bfloat16" and fmt not in BF16_FORMATS:
        raise ValueError(
            f"fmt={fmt!r} cannot compute in bfloat16 (its CPU runtime has no bfloat16 "
            f"convolutions); export it in float32, or use one of {BF16_FORMATS} for bfloat16."
        )
    if precision == "int8":
        if int8_refusal(fmt):
            raise ValueError(int8_refusal(fmt))
        if dtype != "float32":
            raise ValueError(
                "precision='int8' keeps the layers it leaves in float in float32; received "
                f"dtype={dtype!r}."
            )
        quantize.require(fmt)
    elif fmt != "saved_model":
        formats.require(fmt)


def export_model(
    model,
    export_dir,
    model_name=None,
    version=None,
    *,
    fmt="saved_model",
    dtype="float32",
    precision="float32",
    calibration_data=None,
    calibration_images=calibration.DEFAULT_COUNT,
    held_out_images=calibration.DEFAULT_HELD_OUT,
    data_config=None,
    class_names=None,
    overwrite=False,
    conv_impl="grouped",
    **saved_model_kwargs,
):
    """Exports a classifier in one of FORMATS at export_dir/model_name/version.

    "saved_model" is `export_saved_model`; the others write `formats.MODEL_FILES[fmt]` with
    Keras' exporter and export_info.json beside it (`formats.export_info`). With
    precision="int8" the model file is quantized by the format's own tool
    (`resnext_tf.export.quantize`), and export_info.json records the calibration set and the
    top-1 agreement with the float32 model on held-out images of the same source.

    Args:
      model, export_dir, model_name, version, data_config, class_names, overwrite,
        conv_impl: As `export_saved_model`.
      fmt: One of FORMATS.
      dtype: "float32" or "bfloat16" (BF16_FORMATS only).
      precision: One of PRECISIONS; "int8" for fmt in INT8_FORMATS, with dtype="float32".
      calibration_data: With precision="int8": a folder of images, a CIFAR python-version
        folder or archive, or an ImageNet train/ val/ folder (`resnext_tf.data.calibration`).
      calibration_images, held_out_images: How many of its images calibrate, and how many
        others measure the agreement with float32.
      **saved_model_kwargs: top_k, warmup, image_limits, for fmt="saved_model" only;
        image_limits also bounds the calibration images of an INT8 export.

    Returns:
      The path of the version directory.

    Raises:
      ValueError: for an unknown format, dtype or precision, INT8 without calibration_data,
        or as `export_saved_model`.
      DataError: for calibration_data without readable images.
      ImportError: when the format's optional dependencies are missing.
    """
    _check_format(fmt, dtype, precision)
    limits = None
    if precision == "int8":
        if calibration_data is None:
            raise ValueError("precision='int8' needs calibration_data (a folder of images).")
        limits = saved_model_kwargs.pop("image_limits", None)
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
    calibrated = None
    if precision == "int8":
        calibrated = calibration.load_calibration(
            os.fspath(calibration_data), contract, calibration_images, held_out_images, limits
        )

    def write(tmp):
        info = formats.export_info(served, contract, fmt, dtype, precision)
        if calibrated is None:
            formats.keras_export(served, fmt, os.path.join(tmp, formats.MODEL_FILES[fmt]))
        else:
            info["quantization"] = quantize.write_int8(served, fmt, tmp, calibrated.images)
            info["calibration"] = calibrated.record
            info["agreement"] = _agreement(served, runtimes.Export(tmp, fmt, info), calibrated)
        _write_info(tmp, info)

    _write_version(model_base, version, final, overwrite, write)
    logger.info(
        "Exported %s version %d (%s, %s) to %s.", model_name, version, fmt, precision, final
    )
    return final


def _agreement(served, written, calibrated):
    """The agreement record of an INT8 export: its top-1 against the float32 serving model's
    on the held-out images (None without any)."""
    images = calibrated.held_out
    if not len(images):
        logger.warning("No held-out calibration images: the INT8 agreement is not measured.")
        return None
    batches = [images[i : i + 16] for i in range(0, len(images), 16)]
    run = runtimes.runtime(written)
    logits = np.concatenate([run(batch) for batch in batches])
    reference = np.concatenate([served(batch, training=False).numpy() for batch in batches])
    record = {"reference": "the float32 serving model (Keras, BatchNorm folded)"}
    record.update(quantize.agreement(logits, reference))
    level = logging.WARNING if record["top1_agreement"] < AGREEMENT_WARNING else logging.INFO
    logger.log(
        level,
        "INT8 top-1 agreement with float32: %.2f%% of %d held-out images.",
        100 * record["top1_agreement"],
        len(images),
    )
    return record


def check_export(
    model,
    export_dir,
    model_name=None,
    version=None,
    *,
    fmt="saved_model",
    dtype="float32",
    precision="float32",
    data_config=None,
    overwrite=False,
    conv_impl="grouped",
):
    """Runs `export_model`'s checks without writing, so a run that exports at its end fails at
    its start instead.

    Also checks that `export_dir` is writable and that the serving copy of `model` runs one
    image in a TensorFlow graph, where this CPU's kernels could refuse it.

    Raises:
      ExportError: naming what would make the export fail.
    """
    try:
        _check_format(fmt, dtype, precision)
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
