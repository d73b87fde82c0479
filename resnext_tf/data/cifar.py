"""CIFAR-10/100 readers: the official "python version" (folder or .tar.gz) and TFDS."""

import dataclasses
import os
import pickle
import socket
import tarfile
import urllib.parse

import numpy as np


@dataclasses.dataclass(frozen=True)
class _Layout:
    folder: str  # what the official tarball extracts to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    url: str


# Official python-version archives (REFERENCE.md "Data"); CIFAR-100 uses the fine labels.
LAYOUTS = {
    "cifar10": _Layout(
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key=b"labels",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": _Layout(
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        label_key=b"fine_labels",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}
# Seconds to wait for the download host before declaring the machine offline.
REACH_TIMEOUT_S = 5
# Examples per read when collecting a TFDS split into memory.
TFDS_READ_BATCH = 10000


class DataNotFoundError(FileNotFoundError):
    """The dataset is neither on disk nor downloadable; the message says what to fetch."""


def not_found_message(dataset, data_dir, cause):
    """Explains where to put the official archive when CIFAR cannot be found or downloaded."""
    layout = LAYOUTS[dataset]
    return (
        f"Could not find or download {dataset} (data_dir={data_dir!r}: {cause}). "
        f"Without network access, download {layout.url} elsewhere, copy it to this machine and "
        f"pass data_dir=/path/to/{os.path.basename(layout.url)} (read without extracting), or "
        f"extract it and pass data_dir=/path/to/{layout.folder} or its parent folder."
    )


@dataclasses.dataclass(frozen=True)
class CifarArrays:
    """One split held in memory: uint8 images [N, 32, 32, 3] and int32 labels [N]."""

    images: np.ndarray
    labels: np.ndarray

    @property
    def num_examples(self):
        return len(self.labels)


def _parse_batch(blob, label_key):
    batch = pickle.loads(blob, encoding="bytes")
    # Rows hold 1024 R, then 1024 G, then 1024 B values of a row-major 32x32 image.
    images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, np.asarray(batch[label_key], np.int32)


def _join(batches):
    images, labels = zip(*batches, strict=True)
    return CifarArrays(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))


def _find_folder(data_dir, layout):
    """Returns the folder holding the batch files: data_dir itself or data_dir/<official name>."""
    for folder in (data_dir, os.path.join(data_dir, layout.folder)):
        if os.path.isfile(os.path.join(folder, layout.test_files[0])):
            return folder
    return None


def _read_folder(folder, layout):
    def read(names):
        batches = []
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                batches.append(_parse_batch(f.read(), layout.label_key))
        return _join(batches)

    return {"train": read(layout.train_files), "eval": read(layout.test_files)}


def _read_tarball(path, layout):
    with tarfile.open(path, "r:*") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}

        def read(names):
            missing = [n for n in names if f"{layout.folder}/{n}" not in members]
            if missing:
                raise ValueError(
                    f"{path!r} lacks {missing} under {layout.folder}/; expected the official "
                    f"archive {layout.url}."
                )
            blobs = [tar.extractfile(members[f"{layout.folder}/{n}"]).read() for n in names]
            return _join(_parse_batch(blob, layout.label_key) for blob in blobs)

        return {"train": read(layout.train_files), "eval": read(layout.test_files)}


def _reachable(host):
    try:
        socket.create_connection((host, 443), timeout=REACH_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def _read_tfds(dataset, data_dir):
    import tensorflow_datasets as tfds  # slow import, only when TFDS is the source

    host = urllib.parse.urlparse(LAYOUTS[dataset].url).hostname
    builder = tfds.builder(dataset, data_dir=data_dir)
    # Offline, TFDS retries its download for minutes before failing; fail at once instead.
    if not builder.is_prepared() and not _reachable(host):
        cause = f"not prepared in {builder.data_dir} and {host} is unreachable"
        raise DataNotFoundError(not_found_message(dataset, data_dir, cause))
    try:
        splits = tfds.load(dataset, split=["train", "test"], data_dir=data_dir, as_supervised=True)
    except Exception as exc:  # TFDS reports a missing download in many exception types.
        first_line = (str(exc).strip().splitlines() or [""])[0]
        cause = f"TFDS failed with {type(exc).__name__}: {first_line}"
        raise DataNotFoundError(not_found_message(dataset, data_dir, cause)) from None
    arrays = {}
    for name, split in zip(("train", "eval"), splits, strict=True):
        images, labels = zip(*tfds.as_numpy(split.batch(TFDS_READ_BATCH)), strict=True)
        arrays[name] = CifarArrays(np.concatenate(images), np.concatenate(labels).astype(np.int32))
    return arrays


def load_cifar(dataset, data_dir):
    """Reads both CIFAR splits into memory.

    Args:
        dataset: "cifar10" or "cifar100".
        data_dir: The official .tar.gz, its extracted folder or that folder's parent; otherwise a
            TFDS data_dir (None for the TFDS default), downloaded into when the network allows.

    Returns:
        {"train": CifarArrays, "eval": CifarArrays}.

    Raises:
        DataNotFoundError: Nothing usable on disk and TFDS could not download.
    """
    layout = LAYOUTS[dataset]
    if data_dir is not None and os.path.isfile(data_dir):
        return _read_tarball(data_dir, layout)
    if data_dir is not None and not os.path.isdir(data_dir):
        raise DataNotFoundError(not_found_message(dataset, data_dir, "no such file or directory"))
    folder = data_dir and _find_folder(data_dir, layout)
    if folder:
        return _read_folder(folder, layout)
    return _read_tfds(dataset, data_dir)
