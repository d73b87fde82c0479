"""Top-k classes of image files and folders, through the evaluation transform of training.

    python -m resnext_tf.predict --model=resnext50_32x4d --weights=imagenet photo.jpg photos/
    python -m resnext_tf.predict --model_dir=runs/my_run --format=json photos/
    python -m resnext_tf.predict --saved_model=/tmp/serving/resnext50_32x4d photos/

Folders are searched recursively for .jpg, .jpeg, .png, .bmp, .gif and .webp files (any case).
Each image gets the transform the export's serving signature applies (resnext_tf.export,
resnext_tf.data.transforms: shorter side resized, centre crop, normalisation), or ten crops with
--ten_crop. A file that cannot be read is reported on stderr and skipped; the exit code is then 1.
The docs are in docs/predict.md.
"""

import argparse
import csv
import dataclasses
import functools
import json
import logging
import os
import sys

import numpy as np

from resnext_tf.errors import CheckpointError, UserError, WeightsError, user_errors_exit

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
FORMATS = ("table", "json", "csv")
DEFAULT_TOP_K = 5
DEFAULT_BATCH_SIZE = 16
# Progress on stderr: always above this many images, and above the smaller count on a terminal.
PROGRESS_ALWAYS, PROGRESS_TTY = 50, 10
# Without a terminal, progress is one line per this fraction of the images.
PROGRESS_LINE_STEP = 0.1
CSV_COLUMNS = ("image", "rank", "index", "wnid", "label", "probability")
# The class names of the CIFAR python-version files (batches.meta label_names and meta
# fine_label_names), in label order.
CIFAR10_NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()
CIFAR100_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch "
    "crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo "
    "keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain "
    "mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain "
    "plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank "
    "telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf "
    "woman worm"
).split()
CIFAR_NAMES = {"cifar10": CIFAR10_NAMES, "cifar100": CIFAR100_NAMES}


@dataclasses.dataclass(frozen=True)
class ClassNames:
    """Names of a model's classes: labels, and ImageNet wnids where known (else None)."""

    labels: tuple | None = None
    wnids: tuple | None = None

    def describe(self, index):
        """(wnid or None, label) of class `index`; the label falls back to the index."""
        wnid = self.wnids[index] if self.wnids else None
        label = self.labels[index] if self.labels else (wnid or str(index))
        return wnid, label


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One of an image's top-k classes."""

    rank: int
    index: int
    wnid: str | None
    label: str
    probability: float

    def as_dict(self):
        row = dataclasses.asdict(self)
        if row["wnid"] is None:
            del row["wnid"]
        return row


class SkippedImage(Exception):
    """An image that cannot be read or decoded; the message says why, on one line."""


# ----------------------------------------------------------------------------- files


def find_images(paths):
    """The image files named by `paths` (files as given, folders searched recursively).

    Returns:
      (files, problems): the files in order (a folder's sorted), and (path, reason) for each
      path that does not exist.
    """
    files, problems = [], []
    for path in paths:
        if os.path.isdir(path):
            found = []
            for root, dirs, names in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found += [
                    os.path.join(root, name)
                    for name in names
                    if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
                ]
            files += sorted(found)
        elif os.path.exists(path):
            files.append(path)
        else:
            problems.append((path, "no such file or folder"))
    return files, problems


def read_image(path):
    """The encoded bytes of an image file (TensorFlow decodes JPEG, PNG, GIF, BMP and WebP).

    Raises:
      SkippedImage: when the file cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise SkippedImage(f"cannot read the file: {e.strerror or e}") from e


def _tf_reason(error):
    """The decoder's own message in a TensorFlow error, without the graph and node details."""
    message = (getattr(error, "message", None) or str(error)).split("\n\t [[")[0]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    reason = lines[-1].split(" [Op:")[0] if lines else type(error).__name__
    # A failed tf.debugging.Assert prints its message as "assertion failed: [message]".
    wrapped = "assertion failed: ["
    if reason.startswith(wrapped) and reason.endswith("]"):
        reason = reason[len(wrapped) : -1]
    return reason


# ----------------------------------------------------------------------------- progress


class Progress:
    """A dependency-free progress report of `total` images on `stream` (stderr).

    On a terminal one line is redrawn in place (from PROGRESS_TTY images on); elsewhere, from
    PROGRESS_ALWAYS images on, one line is written per tenth of the images.
    """

    def __init__(self, total, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.total = total
        self.done = 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = total > PROGRESS_ALWAYS or (self.tty and total > PROGRESS_TTY)
        self._next_line = PROGRESS_LINE_STEP
        self._drawn = False

    def _text(self):
        return f"predict: {self.done}/{self.total} images ({100 * self.done // self.total}%)"

    def advance(self, count=1):
        self.done += count
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r" + self._text())
            self._drawn = True
        elif self.done >= self._next_line * self.total or self.done == self.total:
            self.stream.write(self._text() + "\n")
            while self._next_line * self.total <= self.done:
                self._next_line += PROGRESS_LINE_STEP
        self.stream.flush()

    def clear(self):
        """Removes the redrawn line so that a message can be printed on its own line."""
        if self._drawn:
            self.stream.write("\r\033[K")
            self._drawn = False

    def close(self):
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False
        self.stream.flush()


# ----------------------------------------------------------------------------- class names


def imagenet_names():
    """The 1000 ImageNet classes of the shipped class index."""
    from resnext_tf.export import imagenet_class_names

    wnids, labels = imagenet_class_names()
    return ClassNames(labels=tuple(labels), wnids=tuple(wnids))


def folder_names(wnids):
    """Names of classes given by their folder names (wnids where ImageNet knows them)."""
    known = imagenet_names()
    label_of = dict(zip(known.wnids, known.labels, strict=True))
    if not any(w in label_of for w in wnids):
        return ClassNames(labels=tuple(wnids))
    return ClassNames(labels=tuple(label_of.get(w, w) for w in wnids), wnids=tuple(wnids))


def read_labels(path):
    """One label a line (blank lines ignored), as a ClassNames."""
    try:
        with open(path, encoding="utf-8") as f:
            labels = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise UserError(f"Cannot read --labels={path!r}: {e.strerror or e}.") from e
    return ClassNames(labels=tuple(labels))


def dataset_names(dataset, num_classes, data_dir=None):
    """The class names a model trained on `dataset` predicts, or ClassNames() when unknown.

    CIFAR-10/100 have their fixed names. An ImageNet-style run on a folder dataset predicts the
    sorted class folders of its train/ (the trainer's labels, resnext_tf.data.imagenet); other
    ImageNet runs predict the 1000 classes of the class index.
    """
    from resnext_tf.data import imagenet

    if dataset in CIFAR_NAMES:
        names = ClassNames(labels=tuple(CIFAR_NAMES[dataset]))
    elif data_dir and os.path.isdir(data_dir) and imagenet.is_folder_layout(data_dir):
        names = folder_names(imagenet.class_names(data_dir))
    else:
        # TFDS imagenet2012 and the full ImageNet folders number the classes as the index.
        names = imagenet_names()
    count = len(names.labels or ())
    if count and count != num_classes:
        logger.warning(
            "The model has %d classes, the %s class names %d; printing class indices (pass "
            "--labels=FILE with one name a line).",
            num_classes,
            dataset,
            count,
        )
        return ClassNames()
    return names


# ----------------------------------------------------------------------------- predictors


def top_predictions(probabilities, names, top_k):
    """The top-k Predictions of one probability vector."""
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    return [
        Prediction(rank, int(i), *names.describe(int(i)), float(probabilities[i]))
        for rank, i in enumerate(order, 1)
    ]


class KerasPredictor:
    """A Keras classifier (logits) with the evaluation transform of its data config."""

    def __init__(self, model, data_config, names, top_k, ten_crop=False):
        import tensorflow as tf

        from resnext_tf import export
        from resnext_tf.data import transforms

        channels = model.input_shape[-1]
        if channels != 3:
            raise UserError(
                f"predict decodes images to RGB; received a model with {channels} input "
                "channels. Call the model on your own arrays instead."
            )
        if ten_crop:
            try:
                ten_crops = dataclasses.replace(data_config, ten_crop=True)
            except ValueError as e:  # DataConfig's rule: ten crops are an ImageNet evaluation
                raise UserError(f"--ten_crop: {e}") from e
            transform = functools.partial(transforms.imagenet_eval, cfg=ten_crops)
        else:
            # The serving signature's own transform, so predict and serving cannot drift.
            transform = export.eval_transform(data_config)
        self._transform = tf.function(
            transform, input_signature=[tf.TensorSpec([], tf.string)], reduce_retracing=True
        )
        self._errors = (tf.errors.OpError,)
        self.model = model
        self.names = names
        self.top_k = top_k
        self.ten_crop = ten_crop

    def prepare(self, data):
        """The transformed image ([H, W, 3], or [10, H, W, 3] with ten crops)."""
        try:
            return self._transform(data).numpy()
        except self._errors as e:
            raise SkippedImage(f"not a decodable image: {_tf_reason(e)}") from e

    def predict(self, items):
        """Lists of top-k Predictions, one per item, in order."""
        batch = np.stack(items)
        if self.ten_crop:
            batch = batch.reshape(-1, *batch.shape[2:])
        logits = np.asarray(self.model.predict_on_batch(batch), np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=-1, keepdims=True)
        if self.ten_crop:
            # The mean of the ten crops' probabilities.
            probabilities = probabilities.reshape(len(items), -1, logits.shape[-1]).mean(axis=1)
        return [top_predictions(p, self.names, self.top_k) for p in probabilities]


class SavedModelPredictor:
    """An exported SavedModel through its serving_default signature (encoded bytes in)."""

    def __init__(self, path, top_k):
        import tensorflow as tf

        from resnext_tf import export

        path = _saved_model_version(path)
        try:
            loaded = tf.saved_model.load(path)
        except (OSError, ValueError, tf.errors.OpError) as e:
            raise UserError(f"Cannot load --saved_model={path!r}: {_tf_reason(e)}") from e
        if export.SERVING_SIGNATURE not in loaded.signatures:
            raise UserError(
                f"{path} has no {export.SERVING_SIGNATURE!r} signature; received signatures "
                f"{sorted(loaded.signatures)}. Export it with python -m resnext_tf.export."
            )
        self._loaded = loaded  # the signature needs its object kept alive
        self._serve = loaded.signatures[export.SERVING_SIGNATURE]
        self._input = export.BYTES_INPUT
        self._tf = tf
        self.top_k = top_k

    def prepare(self, data):
        return data

    def _call(self, items):
        tf = self._tf
        outputs = self._serve(**{self._input: tf.constant(items)})
        return {k: v.numpy() for k, v in outputs.items()}

    def predict(self, items):
        """Lists of top-k Predictions; an image the signature rejects gives a SkippedImage."""
        InvalidArgument = self._tf.errors.InvalidArgumentError
        try:
            return self._rows(self._call(items))
        except InvalidArgument as e:
            if len(items) == 1:
                return [_skipped_by_signature(e)]
        # An image of the batch failed the whole request: find it, and keep the others.
        results = []
        for item in items:
            try:
                results += self._rows(self._call([item]))
            except InvalidArgument as e:
                results.append(_skipped_by_signature(e))
        return results

    def _rows(self, outputs):
        classes, scores = outputs["classes"], outputs["scores"]
        if self.top_k > classes.shape[1]:
            raise UserError(
                f"The SavedModel returns its top {classes.shape[1]} classes; received "
                f"--top_k={self.top_k}. Export it with a larger --top_k."
            )

        def text(key, i, j):
            return outputs[key][i, j].decode("utf-8") if key in outputs else None

        rows = []
        for i in range(classes.shape[0]):
            row = []
            for j in range(self.top_k):
                index, wnid = int(classes[i, j]), text("wnids", i, j)
                label = text("labels", i, j) or wnid or str(index)
                row.append(Prediction(j + 1, index, wnid, label, float(scores[i, j])))
            rows.append(row)
        return rows


def _skipped_by_signature(error):
    # The serving signature names a failed image by its index in the request.
    reason = _tf_reason(error).removeprefix("image 0: ")
    return SkippedImage(f"not a decodable image: {reason}")


def _saved_model_version(path):
    """`path`, or its highest numeric version folder when it is a TF Serving model base."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")) or not os.path.isdir(path):
        return path
    versions = [n for n in os.listdir(path) if n.isdigit()]
    if versions:
        return os.path.join(path, max(versions, key=int))
    return path


# ----------------------------------------------------------------------------- models


def _data_config(model, dataset=None):
    """The evaluation DataConfig: the export's default, or the run's CIFAR dataset."""
    from resnext_tf import export
    from resnext_tf.data.config import DataConfig

    if dataset in CIFAR_NAMES:
        return DataConfig(dataset)
    try:
        return export.default_data_config(model)
    except ValueError as e:
        raise UserError(str(e)) from e


def model_from_weights(name, weights, num_classes=None):
    """(model, data config, class names) of a registered model with `weights` loaded."""
    from resnext_tf.registry import create_model, list_models, model_kwargs
    from resnext_tf.training import modeling
    from resnext_tf.weights import load_weights

    if name not in list_models():
        raise UserError(f"Unknown --model={name!r}; expected one of {list_models()}.")
    try:
        if num_classes is None:
            default = model_kwargs(name)["num_classes"]
            num_classes = modeling.source_num_classes(weights, default=default)
        model = create_model(name, num_classes=num_classes)
        load_weights(model, weights)
    except UserError:
        raise
    except (ValueError, OSError, ImportError) as e:
        raise WeightsError(f"Cannot load --weights={weights!r} into {name}: {e}") from e
    data_config = _data_config(model)
    if data_config.is_cifar:
        names = dataset_names(data_config.dataset, num_classes)
    elif num_classes == len(imagenet_names().labels):
        names = imagenet_names()
    else:
        names = ClassNames()
    return model, data_config, names


def model_from_run(model_dir, name=None):
    """(model, data config, class names) of the latest checkpoint of a training run."""
    from resnext_tf.registry import model_kwargs
    from resnext_tf.training import checkpoint, modeling
    from resnext_tf.training.config import TrainConfig

    found = checkpoint.find_checkpoint(model_dir) if os.path.exists(model_dir) else None
    if found is None:
        raise CheckpointError(
            f"No checkpoint in --model_dir={model_dir!r}; expected a training run folder, its "
            "checkpoints/ folder or a checkpoint directory."
        )
    state = checkpoint.read_state(found)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = {k: v for k, v in state.get("config", {}).items() if k in fields}
    try:
        config = TrainConfig(**{**saved, "sync_bn": False, "conv_impl": "auto"})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"The configuration recorded in {found} is not usable: {e}") from e
    stem = config.recipe.stem
    if name is not None:
        wanted = model_kwargs(name)
        ours = {
            "stem": stem,
            "depth": config.depth,
            "cardinality": config.cardinality,
            "base_width": config.base_width,
        }
        if any(wanted[key] != value for key, value in ours.items()):
            raise UserError(
                f"--model={name} differs from the run in {model_dir} ({ours}); leave out --model "
                "to use the run's architecture."
            )
    size = config.data_config.crop_size
    num_classes = state["num_classes"]
    model = modeling.build_model(config, (size, size, 3), num_classes)
    try:
        checkpoint.restore_model_weights(model, found)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    names = dataset_names(config.dataset, num_classes, config.data_dir)
    return model, _data_config(model, config.dataset), names


# ----------------------------------------------------------------------------- output


def _table(results, stream):
    show_wnid = any(p.wnid for _, predictions in results for p in predictions)
    header = ["image", "rank", "probability", "index"] + (["wnid"] if show_wnid else []) + ["label"]
    rows = []
    for image, predictions in results:
        for p in predictions:
            row = [image if p.rank == 1 else "", str(p.rank), f"{p.probability:.4f}", str(p.index)]
            row += [p.wnid or ""] if show_wnid else []
            rows.append(row + [p.label])
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    right = {"rank", "probability", "index"}
    for row in [header, *rows]:
        cells = [
            cell.rjust(w) if name in right else cell.ljust(w)
            for cell, w, name in zip(row, widths, header, strict=True)
        ]
        stream.write("  ".join(cells).rstrip() + "\n")


def write_results(results, fmt, stream):
    """Writes [(image, [Prediction, ...]), ...] as a table, JSON or CSV."""
    if fmt == "json":
        rows = [{"image": image, "predictions": [p.as_dict() for p in ps]} for image, ps in results]
        json.dump(rows, stream, indent=1, ensure_ascii=False)
        stream.write("\n")
    elif fmt == "csv":
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for image, predictions in results:
            for p in predictions:
                writer.writerow([image, p.rank, p.index, p.wnid or "", p.label, p.probability])
    else:
        _table(results, stream)


# ----------------------------------------------------------------------------- main


def predict_files(predictor, files, batch_size, report, progress):
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
            pending.append((path, predictor.prepare(read_image(path))))
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
    parser.add_argument("--num_classes", type=int, default=None, help="default: the weights'")
    parser.add_argument("--labels", help="file with one class name a line, in class order")
    parser.add_argument("--top_k", type=int, default=DEFAULT_TOP_K)
    parser.add_argument("--format", choices=FORMATS, default="table")
    parser.add_argument(
        "--ten_crop", action="store_true", help="average the probabilities of ten crops"
    )
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE)
    args = parser.parse_args(argv)
    for name in ("top_k", "batch_size", "num_classes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be a positive integer; received {value}")
    if args.weights and not args.model:
        parser.error("--weights needs --model (the architecture the weights are for)")
    return args


def build_predictor(args):
    """The predictor of the command line's model source."""
    if args.saved_model:
        for flag in ("ten_crop", "labels", "num_classes"):
            if getattr(args, flag):
                raise UserError(
                    f"--{flag} does not apply to --saved_model, whose serving signature "
                    "fixes the transform and the class names at export time."
                )
        return SavedModelPredictor(args.saved_model, args.top_k)
    if args.model_dir:
        model, data_config, names = model_from_run(args.model_dir, args.model)
    else:
        model, data_config, names = model_from_weights(args.model, args.weights, args.num_classes)
    if args.labels:
        names = read_labels(args.labels)
        classes = model.output_shape[-1]
        if len(names.labels) != classes:
            raise UserError(
                f"--labels={args.labels!r} names {len(names.labels)} classes; the model has "
                f"{classes}."
            )
    return KerasPredictor(model, data_config, names, args.top_k, args.ten_crop)


@user_errors_exit
def main(argv=None, stdout=None, stderr=None):
    """Predicts the images of the command line; returns 0, or 1 when some were skipped."""
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=stderr)
    args = parse_args(argv)
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
        results = predict_files(predictor, files, args.batch_size, report, progress)
    finally:
        progress.close()
    write_results(results, args.format, stdout)
    stdout.flush()
    return 1 if skipped else 0


if __name__ == "__main__":
    raise SystemExit(main())
