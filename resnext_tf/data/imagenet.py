"""ImageNet sources: the DATA/{train,val}/<wnid>/*.JPEG folders (with a cached index) and TFDS."""

import dataclasses
import hashlib
import json
import math
import os
import time
import zipfile

import numpy as np
from absl import logging

from resnext_tf import fileio
from resnext_tf.data.cifar import DataNotFoundError
from resnext_tf.data.config import IMAGE_EXTENSIONS

# Folder of each split under data_dir (fb.resnet.torch's imagenet layout, docs/reference.md "Data").
SPLIT_FOLDERS = {"train": "train", "eval": "val"}
# Index caches live here under data_dir, or under $XDG_CACHE_HOME/resnext_tf when read-only.
INDEX_FOLDER = ".resnext_tf_index"
# Bump when the cached index format, or the files it takes, change.
INDEX_VERSION = 2
# A cached index is read only when its arrays hold at most this many bytes in all (ImageNet's
# train index is about 1.28M paths of some 40 bytes); the index sits inside the dataset, which
# may come from anyone, so its size is bounded before numpy allocates anything.
MAX_INDEX_BYTES = 512 * 2**20
# Progress is logged every this many class folders while indexing.
LOG_EVERY_DIRS = 100
TFDS_NAME = "imagenet2012"
TFDS_SPLITS = {"train": "train", "eval": "validation"}


@dataclasses.dataclass(frozen=True)
class FileIndex:
    """The images of one split: paths relative to `root` ("<wnid>/<file>") and class indices."""

    root: str
    relpaths: np.ndarray  # bytes, sorted
    labels: np.ndarray  # int32

    @property
    def num_examples(self):
        return len(self.labels)


def is_folder_layout(data_dir):
    """True when data_dir holds train/ or val/ class folders rather than a TFDS data_dir."""
    return any(os.path.isdir(os.path.join(data_dir, f)) for f in SPLIT_FOLDERS.values())


def _subfolders(path):
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def class_names(data_dir):
    """Returns the sorted wnids of data_dir/train (data_dir/val when there is no train/)."""
    train = os.path.join(data_dir, SPLIT_FOLDERS["train"])
    if os.path.isdir(train):
        return _subfolders(train)
    logging.warning("No %s; class indices follow the sorted folders of val/ instead.", train)
    return _subfolders(os.path.join(data_dir, SPLIT_FOLDERS["eval"]))


def _cache_dirs(data_dir):
    user_cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    digest = hashlib.sha1(os.path.abspath(data_dir).encode()).hexdigest()[:16]
    return [os.path.join(data_dir, INDEX_FOLDER), os.path.join(user_cache, "resnext_tf", digest)]


def _index_key(root, wnids, classes):
    # A folder's mtime changes when files are added, removed or renamed in it.
    stamps = [(w, os.stat(os.path.join(root, w)).st_mtime_ns) for w in wnids]
    blob = json.dumps([INDEX_VERSION, os.path.abspath(root), stamps, classes])
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


class _BadIndex(ValueError):
    pass


def _check_npy_header(archive, info):
    """Refuses an .npy member whose header asks for more bytes than the member holds: np.load
    allocates the array the header describes before it reads a byte of it."""
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):  # what np.savez writes, or 2.0 for very large headers
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise _BadIndex(f"{info.filename} is an .npy file of version {version}")
    if math.prod(shape) * dtype.itemsize > info.file_size:
        raise _BadIndex(f"{info.filename} declares shape {shape} of {dtype}, more than it holds")


def _checked_index(path, wnids, num_classes):
    """Reads a cached index, refusing anything a scan of the folders could not have written.

    The cache lives in the dataset's own folder, so it is checked like any other file from
    outside: bounded size, no pickled objects, paths that stay inside the split's class
    folders, labels in range.
    """
    with zipfile.ZipFile(path) as archive:
        total = sum(info.file_size for info in archive.infolist())
        if total > MAX_INDEX_BYTES:
            raise _BadIndex(f"{total} bytes unpacked, over the {MAX_INDEX_BYTES}-byte limit")
        for info in archive.infolist():
            _check_npy_header(archive, info)
    with np.load(path, allow_pickle=False) as cached:
        relpaths, labels = cached["relpaths"], cached["labels"]
    if relpaths.ndim != 1 or relpaths.dtype.kind != "S" or labels.ndim != 1:
        raise _BadIndex("arrays of the wrong kind")
    if labels.dtype.kind not in "iu" or len(labels) != len(relpaths):
        raise _BadIndex("labels of the wrong kind or count")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise _BadIndex(f"labels outside [0, {num_classes})")
    allowed = {os.fsencode(w) for w in wnids}
    for relpath in relpaths:
        folder, sep, file = relpath.partition(b"/")
        if folder not in allowed or not sep or not file or b"/" in file or file in (b".", b".."):
            raise _BadIndex(f"the path {relpath!r} is not <wnid>/<file> of this split")
    return relpaths, labels.astype(np.int32)


def _read_cached(data_dir, name, wnids, num_classes):
    for folder in _cache_dirs(data_dir):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            return _checked_index(path, wnids, num_classes)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            logging.warning("Ignoring the image index %s (%s); listing again.", path, exc)
    return None


def _write_cached(data_dir, name, relpaths, labels):
    split = name.split("-")[0]
    for folder in _cache_dirs(data_dir):
        try:
            os.makedirs(folder, exist_ok=True)
            for stale in os.listdir(folder):
                if stale.startswith(f"{split}-"):
                    os.remove(os.path.join(folder, stale))
            with fileio.atomic_path(os.path.join(folder, name)) as tmp:
                np.savez(tmp, relpaths=relpaths, labels=labels)
            return
        except OSError as exc:
            logging.info("Cannot write the image index to %s (%s).", folder, exc)
    logging.warning(
        "The image index of %s could not be cached; the next start lists it again.", data_dir
    )


def _scan(root, wnids, class_ids):
    relpaths, labels = [], []
    start = time.time()
    for i, wnid in enumerate(wnids, 1):
        with os.scandir(os.path.join(root, wnid)) as entries:
            names = sorted(
                e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
            )
        relpaths += [os.fsencode(os.path.join(wnid, n)) for n in names]
        labels += [class_ids[wnid]] * len(names)
        if i % LOG_EVERY_DIRS == 0 or i == len(wnids):
            logging.info(
                "Indexing %s: %d/%d class folders, %d images, %.0f s.",
                root,
                i,
                len(wnids),
                len(labels),
                time.time() - start,
            )
    return np.asarray(relpaths, dtype=bytes), np.asarray(labels, np.int32)


def load_file_index(data_dir, split, classes):
    """Lists the images of a split, from the cache when the folders have not changed.

    Args:
        data_dir: Folder with train/ and/or val/ holding one subfolder per wnid.
        split: "train" or "eval".
        classes: Sorted wnids; an image's label is its wnid's position here.

    Returns:
        FileIndex, or None when the split's folder does not exist.

    Raises:
        ValueError: The split has a class folder that is not in `classes`.
    """
    root = os.path.join(data_dir, SPLIT_FOLDERS[split])
    if not os.path.isdir(root):
        return None
    wnids = _subfolders(root)
    unknown = sorted(set(wnids) - set(classes))
    if unknown:
        raise ValueError(
            f"{root} has class folders that train/ lacks: {unknown[:5]} ({len(unknown)} in all); "
            f"expected a subset of the {len(classes)} train/ classes."
        )
    name = f"{split}-{_index_key(root, wnids, classes)}.npz"
    cached = _read_cached(data_dir, name, wnids, len(classes))
    if cached is None:
        cached = _scan(root, wnids, {w: i for i, w in enumerate(classes)})
        _write_cached(data_dir, name, *cached)
    return FileIndex(root, *cached)


@dataclasses.dataclass(frozen=True)
class TfdsSplit:
    """A split of a prepared TFDS imagenet2012 (TFRecords), read as a stream."""

    builder: object
    name: str
    num_examples: int


def load_tfds_splits(data_dir):
    """Opens a prepared TFDS imagenet2012 and returns {"train": TfdsSplit, "eval": TfdsSplit}.

    Raises:
        DataNotFoundError: imagenet2012 is not prepared in data_dir (TFDS cannot download it).
    """
    import tensorflow_datasets as tfds  # slow import, only when TFDS is the source

    builder = tfds.builder(TFDS_NAME, data_dir=data_dir)
    splits = builder.info.splits
    if not builder.is_prepared() or not all(s in splits for s in TFDS_SPLITS.values()):
        raise DataNotFoundError(
            f"No ImageNet at data_dir={data_dir!r}. ImageNet cannot be downloaded "
            "automatically: get ILSVRC2012 from https://image-net.org and pass data_dir=DATA "
            "with DATA/train/<wnid>/*.JPEG and DATA/val/<wnid>/*.JPEG, or a TFDS data_dir where "
            f"`tfds build {TFDS_NAME} --manual_dir=<folder with the ILSVRC2012 tars>` has run."
        )
    return {k: TfdsSplit(builder, v, splits[v].num_examples) for k, v in TFDS_SPLITS.items()}
