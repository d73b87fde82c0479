"""Calibration images of post-training INT8 quantization, and the held-out images beside them.

A source is one of:
  * a CIFAR python-version folder or archive (`resnext_tf.data.cifar`): its training split;
  * an ImageNet-style folder with train/<class>/ (else val/<class>/) image folders: that split;
  * any other folder: its image files, searched recursively as predict searches
    (`resnext_tf.data.files.find_images`).
Its images are put in a fixed order (a permutation seeded with SEED, so that classes mix
however the source is sorted); the first `count` readable ones calibrate and the next
`held_out` ones, never used for calibration, measure how often the INT8 model agrees with the
float32 one. Every image goes through the model's evaluation transform
(`resnext_tf.data.evaluation.eval_transform`), exactly as serving and predict see it.
"""

import dataclasses
import hashlib
import logging
import os

import numpy as np
import tensorflow as tf

from resnext_tf import fileio
from resnext_tf.data import cifar, decode, evaluation, imagenet
from resnext_tf.data.files import find_images
from resnext_tf.errors import DataError

logger = logging.getLogger(__name__)

SEED = 0
DEFAULT_COUNT = 300
DEFAULT_HELD_OUT = 200


@dataclasses.dataclass(frozen=True)
class CalibrationSet:
    """Transformed images: float32 [N, H, W, 3] to calibrate with, and held-out ones.

    `record` describes the set for export_info.json: source, kind, counts, selection and
    `sha256`, a digest over the calibration images in order: for each, its name (UTF-8), a NUL
    byte and the 32-byte SHA-256 of its content (a file's bytes; a CIFAR image's 3072 uint8
    values, row by row, RGB interleaved).
    """

    images: np.ndarray
    held_out: np.ndarray
    record: dict


def _cifar_source(source, contract):
    """(kind, names, read) of a CIFAR folder or archive's training split."""
    if os.path.isdir(source):
        datasets = [cifar.folder_dataset(source)]
    else:  # an archive: its dataset is the model's, else whichever layout it holds
        own = [contract.dataset] if contract.is_cifar else []
        datasets = own + [d for d in cifar.LAYOUTS if d not in own]
    error = None
    for dataset in datasets:
        try:
            images = cifar.load_cifar(dataset, source)["train"].images
            break
        except DataError as e:
            error = e
    else:
        raise error
    names = [f"train[{i}]" for i in range(len(images))]
    return f"{dataset} python version, training split", names, lambda i: images[i]


def _file_source(source, limits):
    """(kind, names, read) of an ImageNet-style folder's train/ (or val/), or a folder's images."""
    if imagenet.is_folder_layout(source):
        classes = imagenet.class_names(source)
        split = "train" if os.path.isdir(os.path.join(source, "train")) else "eval"
        index = imagenet.load_file_index(source, split, classes)
        root = index.root
        names = [os.fsdecode(p) for p in index.relpaths]
        kind = f"ImageNet-style folder, {imagenet.SPLIT_FOLDERS[split]}/"
    else:
        root = source
        files, _ = find_images([source])
        names = [os.path.relpath(f, source) for f in files]
        kind = "image folder"
    # A link found in an image folder was skipped by the scan; one swapped in since is refused.
    follow = kind != "image folder"
    return (
        kind,
        names,
        lambda i: fileio.read_limited(os.path.join(root, names[i]), limits.max_bytes, follow),
    )


def open_source(source, contract, limits=None):
    """(kind, names, read) of a calibration source; read(i) is image i's content: a file's
    bytes, or a CIFAR image as uint8 [32, 32, 3].

    Raises:
      DataError: for a source that does not exist or holds no image.
    """
    limits = limits or decode.DEFAULT_LIMITS
    if not os.path.exists(source):
        raise DataError(f"--calibration_data={source!r} does not exist.")
    if os.path.isfile(source) or cifar.folder_dataset(source):
        kind, names, read = _cifar_source(source, contract)
    else:
        kind, names, read = _file_source(source, limits)
    if not names:
        raise DataError(
            f"--calibration_data={source!r} holds no image: expected a folder of image files, "
            "a CIFAR python-version folder or archive, or an ImageNet train/ val/ folder."
        )
    return kind, names, read


def load_calibration(source, contract, count=DEFAULT_COUNT, held_out=DEFAULT_HELD_OUT, limits=None):
    """The CalibrationSet of `source` for a model of data contract `contract`.

    A source with fewer than count + held_out images gives the held-out share at most half of
    them, the rest to calibration. Images that cannot be read or decoded are skipped (logged
    and counted in the record).

    Raises:
      DataError: for a source without images, or without a readable one.
      ValueError: for count < 1 or held_out < 0.
    """
    if count < 1 or held_out < 0:
        raise ValueError(
            f"count must be >= 1 and held_out >= 0; received count={count}, held_out={held_out}."
        )
    limits = limits or decode.DEFAULT_LIMITS
    kind, names, read = open_source(source, contract, limits)
    order = np.random.default_rng(SEED).permutation(len(names))
    asked = count, held_out
    held_out = min(held_out, len(names) // 2)
    count = min(count, len(names) - held_out)
    transform = tf.function(
        evaluation.eval_transform(contract, limits), input_signature=[tf.TensorSpec([], tf.string)]
    )
    digest = hashlib.sha256()
    chosen, kept, skipped = [], [], 0
    for i in order:
        if len(kept) == count + held_out:
            break
        try:
            content = read(i)
            if isinstance(content, np.ndarray):  # a CIFAR image, encoded losslessly
                data, content = tf.io.encode_png(content), content.tobytes()
            else:
                data = content
            image = transform(tf.constant(data)).numpy()
        except (OSError, tf.errors.OpError) as e:
            skipped += 1
            logger.warning("Calibration: skipped %s: %s", names[i], str(e).splitlines()[0][:200])
            continue
        if len(kept) < count:
            digest.update(names[i].encode() + b"\0" + hashlib.sha256(content).digest())
            chosen.append(names[i])
        kept.append(image)
    if not kept:
        raise DataError(f"--calibration_data={source!r}: none of its images could be read.")
    count = min(count, len(kept))
    if (count, len(kept) - count) != asked:
        logger.warning(
            "Calibration: %d images calibrate and %d are held out (of %d in %s).",
            count, len(kept) - count, len(names), source,
        )  # fmt: skip
    images = np.stack(kept)
    record = {
        "source": os.path.abspath(source),
        "kind": kind,
        "images": count,
        "source_images": len(names),
        "skipped": skipped,
        "selection": f"the first readable images of a permutation (numpy default_rng({SEED})) "
        "of the source's images (files: sorted paths; CIFAR: the split's order)",
        "sha256": digest.hexdigest(),
        "first": chosen[:3],
    }
    return CalibrationSet(images[:count], images[count:], record)
