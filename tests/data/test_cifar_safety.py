"""CIFAR files from an untrusted source: no code runs, sizes are bounded, the unpickler cannot be
made to allocate out of proportion or crash, contents and official names are checked, and every
failure is a one-line DataError naming the file."""

import gzip
import io
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from child_process import peak_growth
from image_samples import write_cifar_batches

from resnext_tf.data import DataConfig, DataNotFoundError, cifar, dataset_spec
from resnext_tf.data.cifar import load_cifar
from resnext_tf.errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class _RunsCommand:
    """Pickles as a call of os.system: loading it with pickle.loads runs the command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _payload(marker):
    # A dict like a batch file, with the command where the labels should be.
    return pickle.dumps(
        {b"data": np.zeros((1, 3072), np.uint8), b"labels": _RunsCommand(f"touch {marker}")}
    )


def _batch(data=None, labels=None, protocol=pickle.DEFAULT_PROTOCOL):
    data = np.zeros((2, 3072), np.uint8) if data is None else data
    return pickle.dumps({b"data": data, b"labels": [1, 2] if labels is None else labels}, protocol)


def _write_folder(folder, blobs):
    os.makedirs(folder, exist_ok=True)
    for name in CIFAR10_FILES:
        (folder / name).write_bytes(blobs.get(name, _batch()))
    return folder


def _write_tarball(path, blobs, folder="cifar-10-batches-py"):
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def _all_files(**special):
    return {name: special.get(name, _batch()) for name in CIFAR10_FILES}


def _refused(error, where, name="posix.system"):
    message = str(error)
    assert str(where) in message and name in message and "refused" in message
    assert "\n" not in message


# --- No code runs ----------------------------------------------------------------------------


def test_pickle_payload_in_an_archive_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = _write_tarball(tmp_path / "evil.tar.gz", _all_files(data_batch_1=_payload(marker)))
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", str(path))
    assert not marker.exists()
    _refused(info.value, f"{path} member cifar-10-batches-py/data_batch_1")


def test_pickle_payload_in_a_folder_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    folder = _write_folder(tmp_path / "mine", {"test_batch": _payload(marker)})
    with pytest.raises(DataError) as info:
        dataset_spec(DataConfig("cifar10", data_dir=folder))
    assert not marker.exists()
    _refused(info.value, folder / "test_batch")


@pytest.mark.parametrize(
    "blob, name",
    [
        (b"cbuiltins\neval\n(S'1'\ntR.", "builtins.eval"),
        (b"c__builtin__\nopen\n(S'x'\ntR.", "__builtin__.open"),  # Python 2 spelling
        (b"cnumpy\nload\n(S'x'\ntR.", "numpy.load"),
        (b"csubprocess\nPopen\n.", "subprocess.Popen"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_any_other_global_is_refused(tmp_path, blob, name):
    folder = _write_folder(tmp_path / "mine", {"data_batch_2": blob})
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", str(folder))
    _refused(info.value, folder / "data_batch_2", name)


def test_ndarray_class_cannot_be_called_to_allocate(tmp_path):
    # numpy.ndarray((10**12,)) would ask for a terabyte; only numpy's own pickle form may use it.
    blob = b"cnumpy\nndarray\n((I1000000000000\ntS'u1'\ntR."
    folder = _write_folder(tmp_path / "mine", {"test_batch": blob})
    with pytest.raises(DataError, match="not a readable CIFAR batch file"):
        load_cifar("cifar10", str(folder))


# --- The unpickler cannot be made to allocate or crash --------------------------------------

# Peak memory a crafted batch file may add while it is refused, beyond the file's own bytes.
# Before the opcode pre-scan, the files below cost 1 GiB or more, or crashed the process.
REFUSAL_MEMORY_MIB = 48


def _dtype_call(name):
    # numpy.dtype(name, False, True), as numpy pickles a dtype.
    return b"cnumpy\ndtype\nX" + struct.pack("<I", len(name)) + name + b"\x89\x88\x87R"


def _nested_object_arrays(depth):
    # Each level: an object array of one item, the level below (the memo holds _reconstruct,
    # ndarray, the object dtype, and the level below as entry 3).
    head = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01"
    head += _dtype_call(b"O8") + b"q\x02N"
    below = b"r" + struct.pack("<I", 3) + b"0"
    level = b"h\x00h\x01K\x00\x85C\x01b\x87R(K\x01K\x01\x85h\x02\x89]j\x03\x00\x00\x00atb"
    return head + (below + level) * depth + b"."


# name: (file, what the refusal says after "is refused before it is built: ").
HOSTILE_PICKLES = {
    # The C unpickler's memo table grows to the index: 8 bytes each, 1 GiB for 9 bytes.
    "memo index": (
        b"\x80\x02Nr" + struct.pack("<I", 2**26) + b".",
        "memo index 67108864 at byte 3 after 0 entries",
    ),
    # 8 bytes of stack per byte of file (and the reallocations while it grows).
    "DUP": (b"\x80\x02N" + b"2" * 2**24 + b".", "the opcode DUP at byte 3"),
    # 72 bytes per two-byte list.
    "empty lists": (
        b"\x80\x02]" + b"]a" * 2**23 + b".",
        "more than 262144 opcodes in 16777220 bytes (at byte 262145)",
    ),
    # scalar(dtype("V209715200")) allocates the 200 MiB the dtype says, four times.
    "void scalars": (
        b"\x80\x02("
        + (b"cnumpy.core.multiarray\nscalar\n" + _dtype_call(b"V209715200") + b"\x85R") * 4
        + b"l.",
        "an array or scalar of dtype 'V209715200', not a bool, integer or float dtype",
    ),
    # numpy reads the million items of an object array past the end of the file's empty list.
    "object array": (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R"
        + b"(K\x01J"
        + struct.pack("<i", 10**6)
        + b"\x85"
        + _dtype_call(b"O8")
        + b"\x89]tb.",
        "an array or scalar of dtype object, not a bool, integer or float dtype",
    ),
    # Freeing object arrays nested this deep recurses until the C stack overflows.
    "nested object arrays": (
        _nested_object_arrays(300_000),
        "values nest deeper than 32 levels at byte 478",
    ),
    # So does hashing a tuple nested this deep, as a dict key.
    "nested tuple as a key": (
        b"\x80\x02}N" + b"\x85" * 300_000 + b"Ns.",
        "values nest deeper than 32 levels at byte 36",
    ),
}


@pytest.mark.parametrize("case", HOSTILE_PICKLES)
def test_crafted_pickle_is_refused_before_it_costs_memory_or_crashes(tmp_path, case):
    blob, says = HOSTILE_PICKLES[case]
    folder = _write_folder(tmp_path / "mine", {"data_batch_1": blob})
    growth, error, _ = peak_growth(
        "from resnext_tf.data.cifar import load_cifar", f"load_cifar('cifar10', {str(folder)!r})"
    )
    where = folder / "data_batch_1"
    assert error.startswith(f"DataError: {where} is refused before it is built: {says}")
    assert "MAX_PICKLE_" in error and "\n" not in error
    assert growth < len(blob) / 2**20 + REFUSAL_MEMORY_MIB


def test_full_size_batch_in_the_official_format_is_within_the_bounds(tmp_path):
    # 10,000 images, labels and file names, as each official CIFAR-10 batch holds.
    count = 10_000
    batch = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [i % 10 for i in range(count)],
        b"data": np.zeros((count, 3072), np.uint8),
        b"filenames": [b"image_%05d.png" % i for i in range(count)],
    }
    folder = _write_folder(tmp_path / "mine", {"data_batch_1": _python2_style(batch)})
    assert load_cifar("cifar10", str(folder))["train"].num_examples == count + 4 * 2


# --- Seeded fuzz of the pre-scan and the unpickler -------------------------------------------

# Items of each kind, and the peak memory their whole run may add (each item is a few KB).
FUZZ_ITEMS = 3000
FUZZ_MEMORY_MIB = 48


def _random_argument(rng, arg):
    """Bytes of one opcode argument: a number, a newline-ended text, or length-prefixed data
    (sometimes of a length the data does not hold)."""
    if arg is None:
        return b""
    if arg.n >= 0:  # numbers of every magnitude
        return (int(2 ** rng.uniform(0, 8 * arg.n)) - 1).to_bytes(arg.n, "little")
    if arg.n == pickletools.UP_TO_NEWLINE:
        text = rng.choice([b"0", b"12", b"-3", b"1.5", b"'a'", b"numpy\nndarray", b"x y"])
        return bytes(text) + b"\n"
    width = {
        pickletools.TAKEN_FROM_ARGUMENT1: 1,
        pickletools.TAKEN_FROM_ARGUMENT4: 4,
        pickletools.TAKEN_FROM_ARGUMENT4U: 4,
        pickletools.TAKEN_FROM_ARGUMENT8U: 8,
    }[arg.n]
    data = bytes(rng.integers(0, 256, int(rng.integers(0, 9)), dtype=np.uint8))
    claimed = len(data) if rng.random() < 0.9 else int(rng.integers(0, 2 ** (8 * width - 1)))
    return claimed.to_bytes(width, "little") + data


# Opcodes of batch files: what each needs above the topmost mark (None: a mark) and leaves
# there, for streams that mostly keep the stack consistent and so reach deeper checks.
_STACK_EFFECTS = {
    **dict.fromkeys(["BININT1", "BININT", "SHORT_BINBYTES", "SHORT_BINSTRING"], (0, 1)),
    **dict.fromkeys(["BINUNICODE", "NEWTRUE", "NONE", "GLOBAL", "BINGET", "LONG_BINGET"], (0, 1)),
    **dict.fromkeys(["EMPTY_LIST", "EMPTY_DICT", "EMPTY_TUPLE"], (0, 1)),
    **dict.fromkeys(["LIST", "DICT", "TUPLE"], (None, 1)),
    **dict.fromkeys(["APPENDS", "SETITEMS", "POP_MARK"], (None, 0)),
    "MARK": (0, 0),
    "APPEND": (2, 1),
    "SETITEM": (3, 1),
    "TUPLE1": (1, 1),
    "TUPLE2": (2, 1),
    "TUPLE3": (3, 1),
    "REDUCE": (2, 1),
    "BUILD": (2, 1),
    "BINPUT": (1, 1),
    "LONG_BINPUT": (1, 1),
    "MEMOIZE": (1, 1),
    "POP": (1, 0),
}
_GLOBALS = [
    b"numpy.core.multiarray\n_reconstruct\n",
    b"numpy\nndarray\n",
    b"numpy\ndtype\n",
    b"numpy._core.multiarray\nscalar\n",
    b"numpy._core.numeric\n_frombuffer\n",
    b"_codecs\nencode\n",
    b"os\nsystem\n",
]


def random_opcode_stream(rng, length, structured):
    """A protocol 4 header, then `length` random opcodes with arguments of their kinds: any
    opcodes, or (`structured`) those of batch files, nine in ten keeping the stack consistent."""
    by_name = {opcode.name: opcode for opcode in pickletools.opcodes}
    out, depths = bytearray(b"\x80\x04"), [0]  # items above each mark, the bottom first
    for _ in range(length):
        if not structured:
            opcode = pickletools.opcodes[rng.integers(0, len(pickletools.opcodes))]
        else:
            fits = [
                name
                for name, (needs, _) in _STACK_EFFECTS.items()
                if (len(depths) > 1 if needs is None else depths[-1] >= needs)
            ]
            names = fits if rng.random() < 0.9 else list(_STACK_EFFECTS)
            name = names[rng.integers(0, len(names))]
            opcode = by_name[name]
            needs, leaves = _STACK_EFFECTS[name]
            if name == "MARK":
                depths.append(0)
            elif needs is None and len(depths) > 1:
                depths.pop()
                depths[-1] += leaves
            elif needs is not None:
                depths[-1] = max(depths[-1] - needs, 0) + leaves
        out += opcode.code.encode("latin1")
        if opcode.name == "GLOBAL" and structured:
            out += _GLOBALS[rng.integers(0, len(_GLOBALS))]
        else:
            out += _random_argument(rng, opcode.arg)
    return bytes(out + (b"." if rng.random() < 0.7 else b""))


def mutated(rng, blob):
    """`blob` with a few random flips, insertions, deletions, duplications or a truncation."""
    out = bytearray(blob)
    for _ in range(int(rng.integers(1, 5))):
        at = int(rng.integers(0, len(out) + 1))
        kind = rng.integers(0, 5)
        if kind == 0 and at < len(out):
            out[at] = int(rng.integers(0, 256))
        elif kind == 1:
            out[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8))
        elif kind == 2:
            del out[at : at + int(rng.integers(1, 9))]
        elif kind == 3:
            out[at:at] = out[at : at + int(rng.integers(1, 64))] * int(rng.integers(2, 40))
        else:
            del out[at:]
    return bytes(out)


def test_seeded_fuzz_of_pickles_loads_or_refuses_within_bounds(tmp_path):
    rng = np.random.default_rng(1234)
    valid = [
        _batch(np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), protocol=p)
        for p in range(2, 6)
    ]
    valid.append(_python2_style({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]}))
    items = [
        random_opcode_stream(rng, int(rng.integers(1, 40)), structured=k % 2 == 1)
        for k in range(2 * FUZZ_ITEMS)
    ]
    items += [mutated(rng, valid[k % len(valid)]) for k in range(FUZZ_ITEMS)]
    path = tmp_path / "items.npy"
    np.save(path, np.array(items, dtype=object), allow_pickle=True)
    setup = f"""
import numpy as np, time
from resnext_tf.data.cifar_pickle import unpickle
from resnext_tf.errors import DataError
items = list(np.load({str(path)!r}, allow_pickle=True))
"""
    action = """
outcomes, others, start = {"loaded": 0, "refused": 0}, [], time.time()
for k, blob in enumerate(items):
    try:
        unpickle(blob, f"item {k}")
        outcomes["loaded"] += 1
    except DataError as e:
        outcomes["refused"] += 1
        assert "\\n" not in str(e) and f"item {k} " in str(e), str(e)
    except Exception as e:
        others.append(f"{k}: {type(e).__name__}: {e}"[:300])
print(json.dumps({**outcomes, "others": others, "seconds": time.time() - start}), file=sys.stderr)
"""
    growth, error, stderr = peak_growth(setup, action, timeout=120)
    assert not error, error
    report = json.loads(stderr.strip().splitlines()[-1])
    assert report["others"] == []
    assert report["loaded"] + report["refused"] == len(items)
    assert report["loaded"] > 0 and report["refused"] > 0, report
    assert growth < FUZZ_MEMORY_MIB, f"+{growth:.0f} MiB"


# --- What official and user-written files hold still loads ----------------------------------


class _Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 str (BINSTRING), as the official cPickle-written files do."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def _python2_style(batch):
    out = io.BytesIO()
    _Python2Pickler(out, protocol=2).dump(batch)
    # The official files name numpy 1.x's module; numpy 2 writes numpy._core.
    return out.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def test_official_python2_format_loads(tmp_path):
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    batch = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [0, 9, 4],
        b"data": rows,
        b"filenames": [b"a.png", b"b.png", b"c.png"],
    }
    blob = _python2_style(batch)
    assert b"numpy.core.multiarray" in blob and b"_codecs" not in blob
    folder = _write_folder(tmp_path / "mine", {"test_batch": blob})
    splits = load_cifar("cifar10", str(folder))
    np.testing.assert_array_equal(splits["eval"].labels, [0, 9, 4])
    np.testing.assert_array_equal(splits["eval"].images[1, 0, 0], rows[1, [0, 1024, 2048]])


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_python3_pickles_of_every_protocol_load(tmp_path, protocol):
    labels = [np.int64(3), 7]  # numpy scalars, as list(np.array(...)) gives
    blob = _batch(np.full((2, 3072), 5, np.uint8), labels, protocol)
    folder = _write_folder(tmp_path / "mine", {name: blob for name in CIFAR10_FILES})
    splits = load_cifar("cifar10", str(folder))
    assert splits["train"].labels.tolist() == [3, 7] * 5
    assert splits["eval"].images.shape == (2, 32, 32, 3) and splits["eval"].images.max() == 5


def test_label_array_and_str_keys_load(tmp_path):
    blob = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": np.array([0, 9])})
    folder = _write_folder(tmp_path / "mine", {"test_batch": blob})
    assert load_cifar("cifar10", str(folder))["eval"].labels.tolist() == [0, 9]


# --- Contents are checked -------------------------------------------------------------------


@pytest.mark.parametrize(
    "blob, says",
    [
        (_batch(np.zeros((2, 3000), np.uint8)), "uint8 array of shape (N, 3072)"),
        (_batch(np.zeros((2, 3072), np.float32)), "float32 array"),
        (_batch(np.zeros((2, 32, 32, 3), np.uint8)), "shape (2, 32, 32, 3)"),
        (_batch(labels=[1, 10]), "label 10 in b'labels' is outside [0, 10)"),
        (_batch(labels=[-1, 0]), "label -1"),
        (_batch(labels=[1, 2, 3]), "3 labels in b'labels' for 2 images"),
        (_batch(labels=[1.0, 2.0]), "non-integer"),
        (_batch(labels=np.array([[1, 2]])), "1-D array of ints"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "no b'labels' entry"),
        (pickle.dumps([1, 2]), "holds a list"),
        (_batch()[:40], "not a readable CIFAR batch file"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_wrong_contents_name_the_file(tmp_path, blob, says):
    folder = _write_folder(tmp_path / "mine", {"data_batch_3": blob})
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", str(folder))
    assert str(folder / "data_batch_3") in str(info.value) and says in str(info.value)


def test_cifar100_labels_are_checked_against_100_classes(tmp_path):
    blob = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [99, 100]})
    path = _write_tarball(
        tmp_path / "mine.tar.gz", {"train": blob, "test": blob}, "cifar-100-python"
    )
    with pytest.raises(DataError, match=r"member cifar-100-python/train: label 100 .* \[0, 100\)"):
        load_cifar("cifar100", str(path))


# --- Official names are checked against the official MD5 ------------------------------------


def test_official_archive_name_with_other_contents_fails_md5(tmp_path, monkeypatch):
    monkeypatch.delenv(cifar.SKIP_MD5_ENV, raising=False)
    path = _write_tarball(tmp_path / "cifar-10-python.tar.gz", _all_files())
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", str(path))
    message = str(info.value)
    assert str(path) in message and "c58f30108f718f92721af3b95e74349a" in message
    assert "damaged" in message and "rename the archive" in message
    monkeypatch.setenv(cifar.SKIP_MD5_ENV, "1")
    assert load_cifar("cifar10", str(path))["train"].num_examples == 10


def test_official_folder_name_with_other_contents_fails_md5(tmp_path, monkeypatch):
    monkeypatch.delenv(cifar.SKIP_MD5_ENV, raising=False)
    folder = tmp_path / "cifar-100-python"
    write_cifar_batches(folder, ["train", "test"], [2, 2], b"fine_labels", 0)
    with pytest.raises(DataError) as info:
        load_cifar("cifar100", str(tmp_path))  # the parent: found under the official name
    message = str(info.value)
    assert str(folder / "train") in message and "16019d7e3df5f24257cddd939b257f8d" in message
    assert f"{cifar.SKIP_MD5_ENV}=1" in message and "rename the folder" in message
    assert load_cifar("cifar100", str(folder), verify_md5=False)["eval"].num_examples == 2


def test_own_data_under_another_name_needs_no_md5(tmp_path, monkeypatch):
    monkeypatch.delenv(cifar.SKIP_MD5_ENV, raising=False)
    path = _write_tarball(tmp_path / "cifar-10-mine.tar.gz", _all_files())
    assert load_cifar("cifar10", str(path))["eval"].num_examples == 2


def test_md5_tables_match_the_published_values():
    # Published with the archives (and listed in torchvision.datasets.CIFAR10/CIFAR100).
    assert cifar.BATCH_MD5[("cifar-10-batches-py", "data_batch_1")] == (
        "c99cafc152244af753f735de768cd75f"
    )
    assert cifar.ARCHIVE_MD5["cifar-100-python.tar.gz"] == "eb9058c3a382ffc7106e4002c42a8d85"
    assert {folder for folder, _ in cifar.BATCH_MD5} == {
        layout.folder for layout in cifar.LAYOUTS.values()
    }


# --- Sizes are bounded before reading -------------------------------------------------------


def test_batch_file_over_the_limit_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "MAX_BATCH_BYTES", 1000)
    folder = _write_folder(tmp_path / "mine", {})
    with pytest.raises(DataError, match="over the 1000-byte limit.*MAX_BATCH_BYTES") as info:
        load_cifar("cifar10", str(folder))
    assert str(folder / "data_batch_1") in str(info.value)
    path = _write_tarball(tmp_path / "mine.tar.gz", _all_files())
    with pytest.raises(DataError, match="member cifar-10-batches-py/data_batch_1 is .* over"):
        load_cifar("cifar10", str(path))


def test_archive_scan_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "MAX_ARCHIVE_MEMBERS", 3)
    path = _write_tarball(tmp_path / "mine.tar.gz", _all_files())
    with pytest.raises(DataError, match="more than 3 entries"):
        load_cifar("cifar10", str(path))


def test_archive_member_must_be_a_regular_file(tmp_path):
    path = tmp_path / "links.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DataError, match="data_batch_1 is not a regular file"):
        load_cifar("cifar10", str(path))


def _header(name, kind, size):
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(tarfile.GNU_FORMAT)  # one 512-byte block for a short name


def _padded(data):
    return data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def _write_hostile_tarball(path, head):
    """A .tar.gz of `head` (header blocks and payload, written in pieces) and then the batch
    files, which tarfile reaches only after reading what `head` declares."""
    with gzip.open(path, "wb") as f:
        for piece in head:
            f.write(piece)
        for name, blob in _all_files().items():
            f.write(_header(f"cifar-10-batches-py/{name}", tarfile.REGTYPE, len(blob)))
            f.write(_padded(blob))
        f.write(b"\0" * 2 * tarfile.BLOCKSIZE)
    return path


def _zeros(size):
    return (b"\0" * 2**20 for _ in range(size // 2**20))


def _pax_records(**records):
    lines = b""
    for key, value in records.items():
        record = f" GNU.sparse.{key}={value}\n".encode()
        lines += f"{len(record) + 2}".encode() + record  # the length counts its own 2 digits
    return lines


def _sparse_map(count):
    # A GNU sparse 1.0 member: PAX records naming the format, then a map of `count` numbers.
    records = _pax_records(major=1, minor=0, name="x", realsize=1)
    yield _header("pax", tarfile.XHDTYPE, len(records)) + _padded(records)
    yield _header("GNUSparseFile.0/x", tarfile.REGTYPE, 2 * count + 9)
    yield f"{count}\n".encode()
    for _ in range(count // 2**19):
        yield b"1\n" * 2**19


def _declaring(kind, size):
    # A header whose payload of `size` zeros tarfile reads whole to find the next member.
    yield _header("././@LongLink" if kind == tarfile.GNUTYPE_LONGNAME else "pax", kind, size)
    yield from _zeros(size)


# name: (the blocks before the batch files, what the refusal says after "it holds ").
HOSTILE_TAR_HEADERS = {
    "GNU long name": (
        lambda: _declaring(tarfile.GNUTYPE_LONGNAME, 2**27),
        "long-name or PAX headers of more than 65536 bytes in all (the one at byte 0 declares "
        "134217728; limit MAX_TAR_HEADER_BYTES)",
    ),
    "PAX header": (
        lambda: _declaring(tarfile.XHDTYPE, 2**27),
        "long-name or PAX headers of more than 65536 bytes in all (the one at byte 0 declares "
        "134217728; limit MAX_TAR_HEADER_BYTES)",
    ),
    "GNU sparse 1.0 map": (
        lambda: _sparse_map(2**24),
        "the GNU sparse (PAX 1.0) file 'GNUSparseFile.0/x'",
    ),
    "old GNU sparse": (
        lambda: [_header("x", tarfile.GNUTYPE_SPARSE, 0)],
        "the GNU sparse file 'x'",
    ),
}


@pytest.mark.parametrize("case", HOSTILE_TAR_HEADERS)
def test_tar_header_tarfile_would_read_unbounded_is_refused(tmp_path, case):
    head, says = HOSTILE_TAR_HEADERS[case]
    path = _write_hostile_tarball(tmp_path / "mine.tar.gz", head())
    growth, error, _ = peak_growth(
        "from resnext_tf.data.cifar import load_cifar", f"load_cifar('cifar10', {str(path)!r})"
    )
    assert error.startswith(f"DataError: {path} is refused: it holds {says}, which tarfile")
    assert "\n" not in error
    assert growth < REFUSAL_MEMORY_MIB


@pytest.mark.parametrize("form", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_archive_with_long_names_loads(tmp_path, form):
    # A member of a long name first: a PAX path record or a GNU long-name header.
    path = tmp_path / "mine.tar.gz"
    with tarfile.open(path, "w:gz", format=form) as tar:
        for name, blob in {"notes-" + "x" * 300 + ".txt": b"hi", **_all_files()}.items():
            info = tarfile.TarInfo(name if "notes" in name else f"cifar-10-batches-py/{name}")
            info.size, info.mtime, info.uname = len(blob), 1700000000.5, "é" * 40
            tar.addfile(info, io.BytesIO(blob))
    assert load_cifar("cifar10", str(path))["eval"].num_examples == 2


def test_archive_missing_batches_names_them(tmp_path):
    path = _write_tarball(tmp_path / "mine.tar.gz", {"test_batch": _batch()})
    with pytest.raises(DataError, match="lacks .*cifar-10-batches-py/data_batch_1"):
        load_cifar("cifar10", str(path))


# --- Wrong data_dir values ------------------------------------------------------------------


def test_file_that_is_not_an_archive(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an archive")
    with pytest.raises(DataError, match="is not a readable .tar.gz or .tar archive") as info:
        load_cifar("cifar10", str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_archive(tmp_path):
    whole = _write_tarball(tmp_path / "whole.tar.gz", _all_files()).read_bytes()
    path = tmp_path / "cut.tar.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="cut.tar.gz.*not a readable .*damaged or truncated"):
        load_cifar("cifar10", str(path))


def test_missing_data_dir_is_a_data_error(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        dataset_spec(DataConfig("cifar100", data_dir=tmp_path / "nowhere"))
    assert isinstance(info.value, DataError) and isinstance(info.value, FileNotFoundError)
    assert "nowhere" in str(info.value)


def test_missing_batch_file_in_a_folder(tmp_path):
    folder = _write_folder(tmp_path / "mine", {})
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match="data_batch_4 is missing"):
        load_cifar("cifar10", str(folder))


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_imagenet_data_dir_that_is_not_a_folder(tmp_path, kind):
    path = tmp_path / "imagenet"
    if kind == "file":
        path.write_bytes(b"x")
    with pytest.raises(DataError, match="ImageNet data_dir=.*imagenet.*train/<wnid>"):
        dataset_spec(DataConfig("imagenet", data_dir=path))


# --- Through the entry point ----------------------------------------------------------------


def test_run_cifar_with_a_crafted_archive_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = _write_tarball(tmp_path / "evil.tar.gz", _all_files(data_batch_1=_payload(marker)))
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "run_cifar.py", f"--data_dir={path}", f"--model_dir={tmp_path / 'm'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert not marker.exists()
    assert result.returncode != 0 and "posix.system" in result.stderr
