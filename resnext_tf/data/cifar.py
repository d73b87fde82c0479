"""CIFAR-10/100 readers: the official "python version" (folder or .tar.gz) and TFDS.

Safety. The batch files are pickles, read by `resnext_tf.data.cifar_pickle`'s restricted and
pre-scanned unpickler. Sizes are
checked before reading (MAX_BATCH_BYTES per batch file, MAX_ARCHIVE_MEMBERS and MAX_ARCHIVE_BYTES
for what is scanned in an archive, MAX_TAR_HEADER_BYTES for the long-name and PAX headers tarfile
reads whole on its own), only regular files are read, and the loaded arrays and labels are
checked.

Integrity. A file under an official name must be the official file: the archives
cifar-10-python.tar.gz and cifar-100-python.tar.gz (ARCHIVE_MD5), and the batch files in a folder
named cifar-10-batches-py or cifar-100-python (BATCH_MD5), must have the published MD5. Your own
data in the CIFAR format loads from any other name: an archive such as my-cifar.tar.gz holding
cifar-10-batches-py/data_batch_1..5 and test_batch, or a folder such as my-cifar/ holding those
files, passed as data_dir. Setting the environment variable SKIP_MD5_ENV to 1 (or passing
verify_md5=False to load_cifar) reads such data under the official names too. Either way the
files still go through the restricted unpickler and the checks above.
"""

import dataclasses
import hashlib
import lzma
import os
import socket
import tarfile
import urllib.parse
import zlib

import numpy as np

from resnext_tf.data.cifar_pickle import first_line, unpickle
from resnext_tf.errors import DataError
from resnext_tf.recipes import RECIPES


@dataclasses.dataclass(frozen=True)
class _ArchiveFiles:
    """Where the official archive of a CIFAR dataset keeps its splits and labels."""

    folder: str  # what the official tarball extracts to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int
    url: str


# Official python-version archives (docs/reference.md "Data"); CIFAR-100 uses the fine labels.
LAYOUTS = {
    "cifar10": _ArchiveFiles(
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key=b"labels",
        num_classes=RECIPES["cifar10"].num_classes,
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": _ArchiveFiles(
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        label_key=b"fine_labels",
        num_classes=RECIPES["cifar100"].num_classes,
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}
# Published MD5 of the official archives, by file name (the name alone claims the contents).
ARCHIVE_MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
}
# MD5 of the files the official archives extract to, by (folder name, file name).
BATCH_MD5 = {
    ("cifar-10-batches-py", "data_batch_1"): "c99cafc152244af753f735de768cd75f",
    ("cifar-10-batches-py", "data_batch_2"): "d4bba439e000b95fd0a9bffe97cbabec",
    ("cifar-10-batches-py", "data_batch_3"): "54ebc095f3ab1f0389bbae665268c751",
    ("cifar-10-batches-py", "data_batch_4"): "634d18415352ddfa80567beed471001a",
    ("cifar-10-batches-py", "data_batch_5"): "482c414d41f54cd18b22e5b47cb7c3cb",
    ("cifar-10-batches-py", "test_batch"): "40351d587109b95175f43aff81a1287e",
    ("cifar-100-python", "train"): "16019d7e3df5f24257cddd939b257f8d",
    ("cifar-100-python", "test"): "f0ef6b0ae62326f3e7ffdfab6717acfc",
}
# Set to 1 to read your own CIFAR-format data under the official names without the MD5 check.
SKIP_MD5_ENV = "RESNEXT_TF_SKIP_CIFAR_MD5"
# Largest batch file read into memory; the biggest official one (cifar-100 train) is ~150 MiB.
MAX_BATCH_BYTES = 256 * 2**20
# An archive is scanned for the batch files at most this far: the official ones hold under ten
# entries and ~180 MiB, and the bound keeps a crafted archive from decompressing without end.
MAX_ARCHIVE_MEMBERS = 100
MAX_ARCHIVE_BYTES = 2 * 2**30
# tarfile reads a GNU long-name or PAX header's payload whole while it looks for the next
# member, before the bounds above can see it; these payloads may hold this many bytes in all
# (Python and GNU tar write at most a few hundred bytes per member, a long name up to 4 KiB),
# and there may be at most MAX_ARCHIVE_MEMBERS of them.
MAX_TAR_HEADER_BYTES = 64 * 2**10
# Seconds to wait for the download host before declaring the machine offline.
REACH_TIMEOUT_S = 5
# Examples per read when collecting a TFDS split into memory.
TFDS_READ_BATCH = 10000
# Values per CIFAR image: 3 channels of 32 x 32.
IMAGE_VALUES = 3 * 32 * 32


class DataNotFoundError(DataError, FileNotFoundError):
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


# --- Checks of the loaded batch -------------------------------------------------------------


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return f"a {type(value).__name__}"


def _entry(batch, key, where):
    # Official files have bytes keys (Python 2 str); accept str keys from Python 3 writers too.
    for k in (key, key.decode()):
        if k in batch:
            return batch[k]
    raise DataError(f"{where} has no {key!r} entry; a CIFAR batch is a dict with b'data' and it.")


def _check_images(data, where):
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == IMAGE_VALUES
        and data.shape[0] > 0
    ):
        raise DataError(
            f"{where}: b'data' is {_describe(data)}; expected a uint8 array of shape "
            f"(N, {IMAGE_VALUES}) with N >= 1 (each row one 3 x 32 x 32 image)."
        )


def _check_labels(values, count, where, layout):
    """Returns the labels as int32 [count] after checking type, length and range."""
    key = layout.label_key
    if isinstance(values, list):
        if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
            raise DataError(f"{where}: {key!r} holds a non-integer; expected a list of ints.")
        low, high = (min(values), max(values)) if values else (0, 0)
    elif isinstance(values, np.ndarray) and values.dtype.kind in "iu" and values.ndim == 1:
        low, high = (values.min(), values.max()) if len(values) else (0, 0)
    else:
        raise DataError(
            f"{where}: {key!r} is {_describe(values)}; expected a list or 1-D array of ints."
        )
    if len(values) != count:
        raise DataError(
            f"{where}: {len(values)} labels in {key!r} for {count} images; expected one each."
        )
    if low < 0 or high >= layout.num_classes:
        bad = low if low < 0 else high
        raise DataError(
            f"{where}: label {int(bad)} in {key!r} is outside [0, {layout.num_classes}); "
            f"expected class ids of the {layout.num_classes}-class dataset."
        )
    return np.asarray(values, np.int32)


def _parse_batch(blob, where, layout):
    batch = unpickle(blob, where)
    if not isinstance(batch, dict):
        raise DataError(
            f"{where} holds {_describe(batch)}; expected a CIFAR batch: a dict with b'data' and "
            f"{layout.label_key!r}."
        )
    data = _entry(batch, b"data", where)
    _check_images(data, where)
    labels = _check_labels(_entry(batch, layout.label_key, where), len(data), where, layout)
    # Rows hold 1024 R, then 1024 G, then 1024 B values of a row-major 32x32 image.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _join(batches):
    images, labels = zip(*batches, strict=True)
    return CifarArrays(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))


# --- Sizes and hashes -----------------------------------------------------------------------


def _check_batch_size(size, where):
    if size > MAX_BATCH_BYTES:
        raise DataError(
            f"{where} is {size} bytes, over the {MAX_BATCH_BYTES}-byte limit of a CIFAR batch "
            "file (resnext_tf.data.cifar.MAX_BATCH_BYTES); expected an official-size batch."
        )


def _verify_md5(verify_md5):
    if verify_md5 is not None:
        return verify_md5
    return os.environ.get(SKIP_MD5_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


def _check_md5(where, actual, expected, layout, rename):
    if actual != expected:
        raise DataError(
            f"{where} has MD5 {actual}, not the official {expected}: the file is damaged or "
            f"incomplete (download {layout.url} again), or it is your own data in the CIFAR "
            f"format, which must not use the official name ({rename}) or needs {SKIP_MD5_ENV}=1."
        )


def _file_md5(path):
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- Folders and archives -------------------------------------------------------------------


def _find_folder(data_dir, layout):
    """Returns the folder holding the batch files: data_dir itself or data_dir/<official name>."""
    for folder in (data_dir, os.path.join(data_dir, layout.folder)):
        if os.path.isfile(os.path.join(folder, layout.test_files[0])):
            return folder
    return None


def folder_dataset(data_dir):
    """The CIFAR dataset ("cifar10" or "cifar100") whose python-version batch files data_dir
    holds (in itself or in its official subfolder), or None."""
    for dataset, layout in LAYOUTS.items():
        if _find_folder(data_dir, layout):
            return dataset
    return None


def _read_folder(folder, layout, verify):
    folder_name = os.path.basename(os.path.normpath(os.path.abspath(folder)))

    def read(name):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise DataError(
                f"{path} is missing or not a regular file; the CIFAR folder {folder} needs "
                f"{', '.join(layout.train_files + layout.test_files)}."
            )
        _check_batch_size(os.path.getsize(path), path)
        with open(path, "rb") as f:
            blob = f.read(MAX_BATCH_BYTES + 1)  # bounded even if the file grew since the stat
        _check_batch_size(len(blob), path)
        expected = BATCH_MD5.get((folder_name, name)) if verify else None
        if expected:
            actual = hashlib.md5(blob, usedforsecurity=False).hexdigest()
            rename = f"rename the folder {folder_name} and pass it as data_dir"
            _check_md5(path, actual, expected, layout, rename)
        return _parse_batch(blob, path, layout)

    return {
        "train": _join(read(n) for n in layout.train_files),
        "eval": _join(read(n) for n in layout.test_files),
    }


class _TarHeaderRefused(Exception):
    """An archive holds a header that tarfile would read without a bound."""


# Header types whose payload tarfile reads whole: GNU long names and links, PAX records.
_TAR_EXTENDED_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses, before tarfile reads them, the headers it would read without a bound while it
    finds the next member: long-name and PAX payloads over MAX_TAR_HEADER_BYTES in all or more
    than MAX_ARCHIVE_MEMBERS of them, and sparse files (never CIFAR batch files), whose maps it
    reads block by block until they end."""

    def _proc_member(self, tar):
        # tarfile calls this for every header it reads, chained extensions included.
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _TarHeaderRefused(f"the GNU sparse file {self.name!r}")
        if self.type in _TAR_EXTENDED_TYPES:
            # Counted on the TarFile: the budget is the archive's, whatever the member.
            tar.extended_headers = getattr(tar, "extended_headers", 0) + 1
            tar.extended_header_bytes = getattr(tar, "extended_header_bytes", 0) + self.size
            if tar.extended_headers > MAX_ARCHIVE_MEMBERS:
                raise _TarHeaderRefused(
                    f"more than {MAX_ARCHIVE_MEMBERS} long-name or PAX headers (limit "
                    "MAX_ARCHIVE_MEMBERS)"
                )
            if tar.extended_header_bytes > MAX_TAR_HEADER_BYTES:
                raise _TarHeaderRefused(
                    f"long-name or PAX headers of more than {MAX_TAR_HEADER_BYTES} bytes in all "
                    f"(the one at byte {self.offset} declares {self.size}; limit "
                    "MAX_TAR_HEADER_BYTES)"
                )
        return super()._proc_member(tar)

    def _proc_gnusparse_10(self, next, pax_headers, tar):
        raise _TarHeaderRefused(f"the GNU sparse (PAX 1.0) file {next.name!r}")


def _scan_archive(tar, path, layout):
    """Parses the batch members of an open archive, reading no other member's data."""
    wanted = {f"{layout.folder}/{n}" for n in layout.train_files + layout.test_files}
    parsed, scanned = {}, 0
    for count, member in enumerate(tar, 1):
        scanned += member.size
        if count > MAX_ARCHIVE_MEMBERS or scanned > MAX_ARCHIVE_BYTES:
            raise DataError(
                f"{path} holds more than {MAX_ARCHIVE_MEMBERS} entries or {MAX_ARCHIVE_BYTES} "
                "bytes before its CIFAR batch files (limits MAX_ARCHIVE_MEMBERS and "
                f"MAX_ARCHIVE_BYTES of resnext_tf.data.cifar); expected the official {layout.url}."
            )
        if member.name not in wanted or member.name in parsed:
            continue
        where = f"{path} member {member.name}"
        if not member.isfile():
            raise DataError(f"{where} is not a regular file; expected a CIFAR batch file.")
        _check_batch_size(member.size, where)
        blob = tar.extractfile(member).read(member.size)
        parsed[member.name] = _parse_batch(blob, where, layout)
        if len(parsed) == len(wanted):
            break
    missing = sorted(wanted - set(parsed))
    if missing:
        raise DataError(
            f"{path} lacks {missing}; expected the official archive {layout.url} or one of the "
            "same layout."
        )
    return parsed


def _read_tarball(path, layout, verify):
    expected = ARCHIVE_MD5.get(os.path.basename(path)) if verify else None
    try:
        if expected:
            rename = "rename the archive, e.g. to my-" + os.path.basename(path)
            _check_md5(path, _file_md5(path), expected, layout, rename)
        with tarfile.open(path, "r:*", tarinfo=_BoundedTarInfo) as tar:
            parsed = _scan_archive(tar, path, layout)
    except _TarHeaderRefused as exc:
        raise DataError(
            f"{path} is refused: it holds {exc}, which tarfile would read without a bound "
            f"before any check; expected the official {layout.url} or an archive of the same "
            "layout."
        ) from None
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        raise DataError(
            f"data_dir={path!r} is not a readable .tar.gz or .tar archive ({type(exc).__name__}: "
            f"{first_line(exc)}); pass the official {layout.url} (download it again if it is "
            f"damaged or truncated), the folder it extracts to, or that folder's parent."
        ) from None

    def split(names):
        return _join(parsed[f"{layout.folder}/{n}"] for n in names)

    return {"train": split(layout.train_files), "eval": split(layout.test_files)}


# --- TFDS -----------------------------------------------------------------------------------


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
        cause = f"TFDS failed with {type(exc).__name__}: {first_line(exc)}"
        raise DataNotFoundError(not_found_message(dataset, data_dir, cause)) from None
    arrays = {}
    for name, split in zip(("train", "eval"), splits, strict=True):
        images, labels = zip(*tfds.as_numpy(split.batch(TFDS_READ_BATCH)), strict=True)
        arrays[name] = CifarArrays(np.concatenate(images), np.concatenate(labels).astype(np.int32))
    return arrays


def load_cifar(dataset, data_dir, verify_md5=None):
    """Reads both CIFAR splits into memory.

    Args:
        dataset: "cifar10" or "cifar100".
        data_dir: The official .tar.gz, its extracted folder or that folder's parent, or an
            archive or folder of your own in the same format; otherwise a TFDS data_dir (None
            for the TFDS default), downloaded into when the network allows.
        verify_md5: Check official names against the published MD5 (module docstring); None
            checks unless the environment variable SKIP_MD5_ENV is 1.

    Returns:
        {"train": CifarArrays, "eval": CifarArrays}.

    Raises:
        DataNotFoundError: Nothing usable on disk and TFDS could not download.
        DataError: A file is damaged, not in the CIFAR format, over a size limit, refused by the
            restricted unpickler, or under an official name without the official MD5.
    """
    layout = LAYOUTS[dataset]
    verify = _verify_md5(verify_md5)
    if data_dir is not None and os.path.isfile(data_dir):
        return _read_tarball(data_dir, layout, verify)
    if data_dir is not None and not os.path.isdir(data_dir):
        cause = "not a regular file or folder" if os.path.exists(data_dir) else None
        raise DataNotFoundError(
            not_found_message(dataset, data_dir, cause or "no such file or directory")
        )
    folder = data_dir and _find_folder(data_dir, layout)
    if folder:
        return _read_folder(folder, layout, verify)
    return _read_tfds(dataset, data_dir)
