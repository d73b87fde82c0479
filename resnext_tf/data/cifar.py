"""CIFAR-10/100 readers: the official "python version" (folder or .tar.gz) and TFDS.

Safety. The batch files are pickles, and a pickle may name any Python callable to run while it
loads, so a crafted "CIFAR" file could run code. `_BatchUnpickler` accepts only what CIFAR batch
files hold (dicts, lists, bytes, str, ints and numpy arrays of bool, integer or float dtypes) and
refuses every other global with a DataError naming the file and the global. Even without a
global, the unpickler itself can be made to allocate out of proportion to the file or to crash,
so `_scan_pickle` walks the opcodes first and refuses those files (MAX_PICKLE_* bounds). Sizes are
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
import io
import lzma
import math
import os
import pickle
import pickletools
import socket
import tarfile
import urllib.parse
import zlib

import numpy as np

from resnext_tf.errors import DataError
from resnext_tf.recipes import RECIPES

try:
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric


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
# Bounds of the opcode pre-scan (_scan_pickle), far above what the official files need: they
# nest six levels deep (dict, list, call, tuple, ...), keep about 2,000 items on the unpickler's
# stack (writers append lists in batches of 1000) and hold one opcode per ~800 bytes (the
# pixels are a single opcode). A file may hold MIN_PICKLE_OPCODES opcodes, or one per
# PICKLE_BYTES_PER_OPCODE bytes when that is more.
MAX_PICKLE_DEPTH = 32
MAX_PICKLE_STACK = 100_000
PICKLE_BYTES_PER_OPCODE = 64
MIN_PICKLE_OPCODES = 2**16
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


# --- Restricted unpickling ------------------------------------------------------------------


class _Refused(pickle.UnpicklingError):
    """What a file asks of the unpickler is out of bounds; the message says what and where."""


class _NdarrayType:
    """Stands for numpy.ndarray in a batch file: numpy's pickles pass the class to _reconstruct,
    and nothing else may call it (numpy.ndarray(shape) would allocate any size asked for)."""


# The dtypes a batch file's arrays and scalars may have: bool, integers and floats (refused
# later with a clear message where they do not belong), native byte order. Only these builtin
# descriptors are ever built (`_checked_dtype`): numpy ignores a pickle's BUILD on them, so no
# later opcode can turn one into an object, void or structured dtype (an object array reads its
# items from the file's list past its end; a void scalar is as large as its dtype says).
ALLOWED_DTYPES = tuple(np.dtype(c) for c in "?bBhHiIlLqQefd")


def _checked_dtype(value):
    if isinstance(value, str | bytes) and len(value) <= 8:
        try:
            value = np.dtype(value)
        except TypeError:
            pass
    if not any(value is allowed for allowed in ALLOWED_DTYPES):
        shown = value if isinstance(value, np.dtype) else repr(value)[:40]
        raise _Refused(f"an array or scalar of dtype {shown}, not a bool, integer or float dtype")
    return value


def _dtype(name, align=False, copy=False):
    # numpy pickles a dtype as dtype(name, align, copy=True) and then BUILDs its byte order and
    # fields; the builtin descriptor returned here ignores that BUILD.
    return _checked_dtype(name)


def _reconstruct(subtype, shape, dtype):
    # numpy pickles an array as _reconstruct(ndarray, (0,), ...) and then sets its shape, dtype
    # and data from the file (BUILD); only that empty plain-array form is accepted.
    if subtype is not _NdarrayType or math.prod(shape) != 0:
        raise pickle.UnpicklingError(f"unexpected array construction {shape!r}")
    return _multiarray._reconstruct(np.ndarray, shape, _checked_dtype(dtype))


def _scalar(dtype, *value):
    return _multiarray.scalar(_checked_dtype(dtype), *value)


def _frombuffer(buffer, dtype, shape, order):
    return _numeric._frombuffer(buffer, _checked_dtype(dtype), shape, order)


def _latin1_bytes(text, encoding):
    # Python 3 pickles of protocol 0-2 write bytes as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected encoding {encoding!r}")
    return text.encode("latin1")


def _allowed_globals():
    """(module, name) -> object for everything a CIFAR batch file may name: numpy arrays, dtypes
    and scalars as numpy 1.x (numpy.core) and 2.x (numpy._core) pickle them; the official files
    (Python 2 cPickle) name numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype."""
    allowed = {
        ("numpy", "ndarray"): _NdarrayType,
        ("numpy", "dtype"): _dtype,
        ("_codecs", "encode"): _latin1_bytes,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = _scalar
        # Protocol 5 pickles of contiguous arrays: frombuffer over bytes from the file.
        allowed[(f"{package}.numeric", "_frombuffer")] = _frombuffer
    return allowed


ALLOWED_GLOBALS = _allowed_globals()


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch file; refuses every global outside ALLOWED_GLOBALS."""

    def __init__(self, file, where):
        # encoding="bytes": the official files come from Python 2, whose str values are bytes.
        super().__init__(file, encoding="bytes")
        self._where = where

    def find_class(self, module, name):
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise DataError(
                f"{self._where} refers to the Python global {module}.{name}, which a CIFAR batch "
                "file never holds (it may be crafted to run code); refused. CIFAR batch files "
                "hold only dicts, lists, bytes, str, ints and numpy arrays."
            )
        return allowed


# --- Opcode pre-scan ------------------------------------------------------------------------

# Opcodes no CIFAR batch file holds. DUP is written by no pickler, and a file of them grows
# the unpickler's stack by 8 bytes per byte; the others build class instances or need
# persistent ids, buffers or an extension registry, none of which a batch file has.
_FOREIGN_OPCODES = {
    "DUP",
    "PERSID",
    "BINPERSID",
    "EXT1",
    "EXT2",
    "EXT4",
    "INST",
    "OBJ",
    "NEWOBJ",
    "NEWOBJ_EX",
    "NEXT_BUFFER",
    "READONLY_BUFFER",
}
# Opcodes that push a number, string, bytes, None, bool or global: values that hold nothing.
_PUSHES = {
    *("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT"),
    *("STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"),
    *("UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "BYTEARRAY8"),
    *("NONE", "NEWTRUE", "NEWFALSE", "EMPTY_TUPLE", "GLOBAL"),
}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}
_TUPLES = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
# Opcodes that build a container from the items above the topmost mark.
_FROM_MARK = {"LIST": "list", "DICT": "dict", "TUPLE": "tuple", "FROZENSET": "tuple"}
# Opcodes that fill the container below their items: its kind, and how many items they take
# (None: those above the topmost mark).
_FILLS = {
    "APPEND": ("list", 1),
    "APPENDS": ("list", None),
    "SETITEM": ("dict", 2),
    "SETITEMS": ("dict", None),
    "ADDITEMS": ("set", None),
    "BUILD": ("call", 1),
}


class _Node:
    """A container or call result on the pre-scan's stack (other values stand as None)."""

    __slots__ = ("kind", "depth", "nested")

    def __init__(self, kind):
        self.kind, self.depth, self.nested = kind, 1, False


def _nest(parent, children, pos):
    """Records `children` inside `parent`; returns `parent`."""
    for child in children:
        if child is not None:
            child.nested = True
            parent.depth = max(parent.depth, child.depth + 1)
    if parent.depth > MAX_PICKLE_DEPTH:
        raise _Refused(f"values nest deeper than {MAX_PICKLE_DEPTH} levels at byte {pos}")
    return parent


def _scan_pickle(blob):
    """Walks the opcodes of `blob` without building anything.

    Follows the unpickler's stack, marks and memo as far as their sizes and the nesting depth
    of the values go. A container may only be filled before it is nested in another value (as
    every pickler writes it), so the depth known when a value is nested stays true.

    Raises:
        _Refused: at the first opcode over a MAX_PICKLE_* bound or that no batch file holds.
        ValueError, pickle.UnpicklingError: the bytes are not a well-formed pickle.
    """
    limit = max(MIN_PICKLE_OPCODES, len(blob) // PICKLE_BYTES_PER_OPCODE)
    stack, marks, memo = [], [], []

    def take(count, name, pos):
        """Pops `count` items (None: those above the topmost mark, and the mark)."""
        if count is None:
            if not marks:
                raise pickle.UnpicklingError(f"{name} at byte {pos} without a mark")
            count = len(stack) - marks.pop()
        elif count > len(stack) - (marks[-1] if marks else 0):
            raise pickle.UnpicklingError(f"{name} at byte {pos} pops an empty stack")
        items = stack[len(stack) - count :]
        del stack[len(stack) - count :]
        return items

    for count, (opcode, arg, pos) in enumerate(pickletools.genops(io.BytesIO(blob)), 1):
        name = opcode.name
        if count > limit:
            raise _Refused(
                f"more than {limit} opcodes in {len(blob)} bytes (at byte {pos}); a batch file "
                "is mostly pixel bytes"
            )
        if name in _PUSHES:
            stack.append(None)
        elif name in _PUTS:
            index = len(memo) if arg is None else arg
            if len(stack) == (marks[-1] if marks else 0):
                raise pickle.UnpicklingError(f"{name} at byte {pos} has nothing to store")
            # Picklers number memo entries in order (Python 2 from 1), and the unpickler's
            # table grows to the largest index: 8 bytes for each number skipped.
            if index > len(memo) + 1:
                raise _Refused(f"memo index {index} at byte {pos} after {len(memo)} entries")
            memo.extend([None] * (index + 1 - len(memo)))
            memo[index] = stack[-1]
        elif name in _GETS:
            if arg >= len(memo):
                raise pickle.UnpicklingError(f"memo index {arg} at byte {pos} was never stored")
            stack.append(memo[arg])
        elif name == "REDUCE":
            _, args = take(2, name, pos)
            stack.append(_nest(_Node("call"), [args], pos))
        elif name in _TUPLES:
            stack.append(_nest(_Node("tuple"), take(_TUPLES[name], name, pos), pos))
        elif name in _FILLS:
            kind, taken = _FILLS[name]
            items = take(taken, name, pos)
            target = stack[-1] if len(stack) > (marks[-1] if marks else 0) else None
            if target is None or target.kind != kind or target.nested:
                raise _Refused(
                    f"{name} at byte {pos} fills something other than a {kind} being built"
                )
            _nest(target, items, pos)
        elif name == "MARK":
            marks.append(len(stack))
        elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"):
            stack.append(_Node(name[6:].lower()))
        elif name in _FROM_MARK:
            stack.append(_nest(_Node(_FROM_MARK[name]), take(None, name, pos), pos))
        elif name == "STACK_GLOBAL":
            take(2, name, pos)
            stack.append(None)
        elif name == "POP" and marks and len(stack) == marks[-1]:
            marks.pop()  # the unpickler's POP drops a mark when no item lies above it
        elif name in ("POP", "POP_MARK", "STOP"):
            take(None if name == "POP_MARK" else 1, name, pos)
        elif name == "FRAME":
            # Lengths of strings and bytes are checked against the file by genops itself.
            if arg > len(blob) - pos:
                raise pickle.UnpicklingError(f"a frame of {arg} bytes at byte {pos} passes the end")
        elif name != "PROTO":  # _FOREIGN_OPCODES
            raise _Refused(f"the opcode {name} at byte {pos}, which batch files never hold")
        if len(stack) + len(marks) > MAX_PICKLE_STACK:
            raise _Refused(f"more than {MAX_PICKLE_STACK} items on the stack at byte {pos}")


def _first_line(exc):
    return (str(exc).strip().splitlines() or [""])[0]


def _unpickle(blob, where):
    try:
        _scan_pickle(blob)
        return _BatchUnpickler(io.BytesIO(blob), where).load()
    except _Refused as exc:
        raise DataError(
            f"{where} is refused before it is built: {exc}. CIFAR batch files hold a dict of "
            "bytes, lists of ints or bytes, and uint8 or integer arrays (limits MAX_PICKLE_* of "
            "resnext_tf.data.cifar)."
        ) from None
    except DataError:
        raise
    except Exception as exc:  # a damaged or foreign file fails in many exception types
        raise DataError(
            f"{where} is not a readable CIFAR batch file ({type(exc).__name__}: "
            f"{_first_line(exc)}); it is damaged, truncated or in another format."
        ) from None


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
    batch = _unpickle(blob, where)
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
            f"{_first_line(exc)}); pass the official {layout.url} (download it again if it is "
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
        cause = f"TFDS failed with {type(exc).__name__}: {_first_line(exc)}"
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
