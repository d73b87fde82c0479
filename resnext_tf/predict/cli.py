"""python -m resnext_tf.predict: the top-k classes of image files and folders.

    python -m resnext_tf.predict --model=resnext50_32x4d --weights=imagenet photo.jpg photos/
    python -m resnext_tf.predict --model_dir=runs/my_run --output_format=json photos/
    python -m resnext_tf.predict --saved_model=/tmp/serving/resnext50_32x4d photos/
    python -m resnext_tf.predict --export=/tmp/ovms/resnext50_32x4d photos/   # OpenVINO, ONNX,
                                                                             # LiteRT, float or INT8

Each image gets its model's evaluation transform (or ten crops with --ten_crop); a file that
cannot be read is reported on stderr and skipped, and the exit code is then 1 (docs/predict.md).
"""

import argparse
import logging
import sys

from resnext_tf import fileio, runs
from resnext_tf.contract import of_model
from resnext_tf.data import decode
from resnext_tf.data.config import IMAGE_EXTENSIONS, ImageLimits
from resnext_tf.data.files import find_images
from resnext_tf.errors import UserError, WeightsError, renamed_flags, user_errors_exit
from resnext_tf.export import DEFAULT_TOP_K, runtimes
from resnext_tf.predict.output import OUTPUT_FORMATS, Progress, write_results
from resnext_tf.predict.predictors import (
    ExportPredictor,
    KerasPredictor,
    SavedModelPredictor,
    SkippedImage,
)
from resnext_tf.registry import create_model, list_models, model_kwargs

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
# The output flag was --format, which names the artefact kind in the export command.
RENAMED = {"--format": "--output_format"}


def read_image(path, max_bytes=decode.DEFAULT_LIMITS.max_bytes):
    """The encoded bytes of an image file: a regular file of at most `max_bytes` bytes.

    Raises:
      SkippedImage: when the file cannot be read, is not a regular file or is too large.
    """
    try:
        return fileio.read_limited(path, max_bytes)
    except OSError as e:
        raise SkippedImage(f"cannot read the file: {e.strerror or e}") from e


def read_labels(path):
    """One label a line (blank lines ignored)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise UserError(f"Cannot read --labels={path!r}: {e.strerror or e}.") from e


def model_from_weights(name, weights, num_classes=None):
    """A registered model (carrying its variant's data contract) with `weights` loaded."""
    if name not in list_models():
        raise UserError(f"Unknown --model={name!r}; expected one of {list_models()}.")
    try:
        if num_classes is None:
            num_classes = runs.source_num_classes(weights, model_kwargs(name)["num_classes"])
        model = create_model(name, num_classes=num_classes)
        runs.load_run_or_weights(model, weights)
    except UserError:
        raise
    except (ValueError, OSError, ImportError) as e:
        raise WeightsError(f"Cannot load --weights={weights!r} into {name}: {e}") from e
    return model


def predict_files(predictor, files, batch_size, report, progress, max_bytes):
    """Predicts `files` in batches; unreadable ones are passed to `report(path, reason)`.

    Returns:
      [(path, [Prediction, ...]), ...] for the files that were predicted, in order.
    """
    results, pending = [], []

    def flush():
        outputs = predictor.predict([item for _, item in pending])
        for (path, _), output in zip(pending, outputs, strict=True):
            if isinstance(output, SkippedImage):
                report(path, str(output))
            else:
                results.append((path, output))
        progress.advance(len(pending))
        pending.clear()

    for path in files:
        try:
            pending.append((path, predictor.prepare(read_image(path, max_bytes))))
        except SkippedImage as e:
            report(path, str(e))
            progress.advance()
            continue
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m resnext_tf.predict", description=__doc__.split("\n")[0]
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    parser.add_argument("--model", help="registered architecture (resnext50_32x4d, ...)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--weights", help="with --model: 'imagenet', a published name, or a weights file"
    )
    source.add_argument("--model_dir", help="training run folder (its latest checkpoint)")
    source.add_argument("--saved_model", help="exported SavedModel (or its TF Serving base)")
    source.add_argument(
        "--export",
        help="an export of resnext_tf.export in any format (SavedModel, ONNX, OpenVINO, LiteRT; "
        "float or INT8): a version folder or its model base",
    )
    parser.add_argument("--num_classes", type=int, default=None, help="default: the weights'")
    parser.add_argument("--labels", help="file with one class name a line, in class order")
    parser.add_argument("--top_k", type=int, default=DEFAULT_TOP_K)
    parser.add_argument("--output_format", choices=OUTPUT_FORMATS, default="table")
    parser.add_argument(
        "--ten_crop", action="store_true", help="the mean logits of ten crops (ImageNet models)"
    )
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE)
    limits = decode.DEFAULT_LIMITS
    parser.add_argument("--max_image_pixels", type=int, default=limits.max_pixels)
    parser.add_argument("--max_image_aspect", type=float, default=limits.max_aspect)
    parser.add_argument(
        "--max_image_bytes", type=int, default=limits.max_bytes, help="larger files are skipped"
    )
    args = parser.parse_args(renamed_flags(argv, RENAMED))
    for name in ("top_k", "batch_size", "num_classes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be a positive integer; received {value}")
    if args.weights and not args.model:
        parser.error("--weights needs --model (the architecture the weights are for)")
    try:
        limits = (args.max_image_pixels, args.max_image_aspect, args.max_image_bytes)
        args.limits = ImageLimits(*limits)
    except ValueError as e:
        parser.error(str(e))
    return args


def _saved_model_predictor(path, args, flag):
    for name in ("ten_crop", "labels", "num_classes"):
        if getattr(args, name):
            raise UserError(
                f"--{name} does not apply to {flag}, whose serving signature fixes the "
                "transform and the class names at export time."
            )
    return SavedModelPredictor(path, args.top_k)


def _export_predictor(args):
    try:
        exported = runtimes.open_export(args.export)
    except ValueError as e:
        raise UserError(f"--export={args.export!r}: {e}") from e
    if exported.fmt == "saved_model":
        return _saved_model_predictor(exported.path, args, "a SavedModel")
    if args.num_classes:
        raise UserError("--num_classes does not apply to --export: the export has its classes.")
    labels = read_labels(args.labels) if args.labels else None
    predictor = ExportPredictor(exported, args.top_k, args.ten_crop, args.limits, labels)
    if predictor.contract.labels is None:
        logger.warning(
            "The export's classes have no names; printing class indices (pass --labels=FILE)."
        )
    return predictor


def build_predictor(args):
    """The predictor of the command line's model source."""
    if args.saved_model:
        path = runtimes.version_folder(args.saved_model)
        return _saved_model_predictor(path, args, "--saved_model")
    if args.export:
        return _export_predictor(args)
    if args.model_dir:
        model, _ = runs.model_from_run(args.model_dir, variant=args.model)
    else:
        model = model_from_weights(args.model, args.weights, args.num_classes)
    contract, classes = of_model(model), model.output_shape[-1]
    if args.labels:
        labels = read_labels(args.labels)
        if len(labels) != classes:
            raise UserError(
                f"--labels={args.labels!r} names {len(labels)} classes; the model has {classes}."
            )
        contract = contract.with_labels(labels)
    elif contract.labels is None:
        logger.warning(
            "The model's %d classes have no names; printing class indices (pass --labels=FILE "
            "with one name a line).",
            classes,
        )
    return KerasPredictor(model, contract, args.top_k, args.ten_crop, args.limits)


@user_errors_exit
def main(argv=None, stdout=None, stderr=None):
    """Predicts the images of the command line; returns 0, or 1 when some were skipped."""
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=stderr)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    files, missing = find_images(args.images)
    for path, reason in missing:
        print(f"skipped {path}: {reason}", file=stderr)
    if not files:
        raise UserError(
            f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in {' '.join(args.images)}."
        )
    predictor = build_predictor(args)
    progress = Progress(len(files), stderr)
    skipped = len(missing)

    def report(path, reason):
        nonlocal skipped
        skipped += 1
        progress.clear()
        print(f"skipped {path}: {reason}", file=stderr)

    try:
        results = predict_files(
            predictor, files, args.batch_size, report, progress, args.max_image_bytes
        )
    finally:
        progress.close()
    write_results(results, args.output_format, stdout)
    stdout.flush()
    return 1 if skipped else 0
