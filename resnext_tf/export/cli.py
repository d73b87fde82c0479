"""python -m resnext_tf.export: a registry model with weights, or a training run, exported.

    python -m resnext_tf.export --model=resnext50_32x4d --weights=imagenet --export_dir=DIR
    python -m resnext_tf.export --model_dir=runs/my_run --export_dir=DIR --format=openvino
    python -m resnext_tf.export --model_dir=runs/my_run --export_dir=DIR --format=openvino \
        --precision=int8 --calibration_data=PHOTOS_OR_DATASET
"""

import argparse
import logging
import sys

from resnext_tf import fold, runs
from resnext_tf.data import calibration, decode
from resnext_tf.data.config import ImageLimits
from resnext_tf.errors import renamed_flags, user_errors_exit
from resnext_tf.export import (
    BF16_FORMATS,
    DEFAULT_TOP_K,
    FORMATS,
    PRECISIONS,
    SERVING_CONV_IMPLS,
    export_model,
    int8_refusal,
)
from resnext_tf.registry import create_model, list_models, model_kwargs

# Flags renamed to the training flags' names for the same limits; the old names still work.
RENAMED = {
    "--max_pixels": "--max_image_pixels",
    "--max_aspect": "--max_image_aspect",
    "--max_bytes": "--max_image_bytes",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m resnext_tf.export", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", choices=list_models(), help="architecture (with --weights)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--weights", help="weights file (.weights.h5, .keras, .pth, .safetensors, .t7) or name"
    )
    source.add_argument(
        "--model_dir", help="training run directory (latest checkpoint), checkpoint or pointer"
    )
    parser.add_argument("--export_dir", required=True, help="base directory of the exports")
    parser.add_argument("--version", type=int, default=None, help="default: next free version")
    parser.add_argument("--model_name", default=None, help="served name; default: the model's")
    parser.add_argument("--num_classes", type=int, default=None, help="default: the weights'")
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
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="int8: calibrated post-training INT8 (onnx, openvino, litert); float32: as --dtype",
    )
    parser.add_argument(
        "--calibration_data",
        help="with --precision=int8: a folder of images (searched recursively), a CIFAR "
        "python-version folder or archive, or an ImageNet train/ val/ folder",
    )
    parser.add_argument(
        "--calibration_images",
        type=int,
        default=calibration.DEFAULT_COUNT,
        help="images of --calibration_data that calibrate",
    )
    parser.add_argument(
        "--held_out_images",
        type=int,
        default=calibration.DEFAULT_HELD_OUT,
        help="other images of --calibration_data on which the INT8 model's top-1 agreement "
        "with float32 is measured (0: not measured)",
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
    limits = decode.DEFAULT_LIMITS
    parser.add_argument(
        "--max_image_pixels",
        type=int,
        default=limits.max_pixels,
        help="largest width x height served (a GIF: of all its frames), read from the header",
    )
    parser.add_argument(
        "--max_image_aspect",
        type=float,
        default=limits.max_aspect,
        help="largest longer side / shorter side served",
    )
    parser.add_argument(
        "--max_image_bytes", type=int, default=limits.max_bytes, help="largest encoded image"
    )
    args = parser.parse_args(renamed_flags(argv, RENAMED) if argv is not None else None)
    if args.weights and not args.model:
        parser.error("--weights needs --model (the architecture the weights are for)")
    if args.model_dir and args.num_classes:
        parser.error("--num_classes applies to --weights; a training run records its classes")
    if args.dtype == "bfloat16" and args.format not in BF16_FORMATS:
        parser.error(
            f"--format={args.format} cannot compute in bfloat16 (its CPU runtime has no bfloat16 "
            f"convolutions); use --dtype=float32, or --format in {BF16_FORMATS}."
        )
    if args.precision == "int8":
        if int8_refusal(args.format):
            parser.error(int8_refusal(args.format))
        if args.dtype != "float32":
            parser.error("--precision=int8 keeps its float layers in float32; drop --dtype")
        if not args.calibration_data:
            parser.error("--precision=int8 needs --calibration_data (a folder of images)")
        if args.calibration_images < 1 or args.held_out_images < 0:
            parser.error("--calibration_images must be >= 1 and --held_out_images >= 0")
    elif args.calibration_data:
        parser.error("--calibration_data applies to --precision=int8")
    try:
        args.image_limits = ImageLimits(
            args.max_image_pixels, args.max_image_aspect, args.max_image_bytes
        )
    except ValueError as e:
        parser.error(str(e))
    return args


def load_model(args):
    """The model to export, carrying its data contract: the run's, or the variant's."""
    if args.model_dir:
        model, _ = runs.model_from_run(args.model_dir, variant=args.model)
        return model
    default = model_kwargs(args.model)["num_classes"]
    num_classes = args.num_classes or runs.source_num_classes(args.weights, default=default)
    model = create_model(args.model, num_classes=num_classes)
    runs.load_run_or_weights(model, args.weights)
    return model


@user_errors_exit  # a bad weights file or model_dir: one line, exit 2
def main(argv=None):
    """Builds the model, loads its weights, exports it; returns the process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    model = load_model(args)
    kwargs = {}
    if args.format == "saved_model":
        kwargs = dict(top_k=args.top_k, warmup=not args.no_warmup, image_limits=args.image_limits)
    elif args.precision == "int8":
        kwargs = dict(
            precision="int8",
            calibration_data=args.calibration_data,
            calibration_images=args.calibration_images,
            held_out_images=args.held_out_images,
            image_limits=args.image_limits,
        )
    path = export_model(
        model,
        args.export_dir,
        args.model_name or args.model or model.name,
        args.version,
        fmt=args.format,
        dtype=args.dtype,
        overwrite=args.overwrite,
        conv_impl=args.conv_impl,
        **kwargs,
    )
    print(path)
    return 0
