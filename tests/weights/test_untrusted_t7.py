"""Crafted .t7 files: every bad length, view or structure is a WeightsError naming the file.

The crafted files are read in a child process, so a reader that crashed (as torchfile's
unchecked `as_strided` views do on such files) fails the test instead of ending pytest.
"""

import json
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch_files
from child_process import peak_growth
from torch_files import NUMBER, TABLE, TORCH, Obj, RawTensor

from resnext_tf.errors import WeightsError
from resnext_tf.weights import read_t7
from resnext_tf.weights.t7file import MAX_DEPTH, T7FormatError, T7Reader

BLOCKS, CARDINALITY = (1, 1, 1), 2
VALUES = np.arange(4, dtype=np.float32)


def small_state():
    rng = np.random.default_rng(3)
    return torch_files.random_state_dict(rng, (64, 128, 256), BLOCKS, CARDINALITY, 4, 3, 10)


def model_with(**stem_fields):
    """The tiny CIFAR model of test_torch7 with fields of its stem convolution replaced."""
    tree = torch_files.cifar_model(small_state(), BLOCKS, CARDINALITY)
    tree.fields["modules"][0].fields.update(stem_fields)
    return tree


def nested_tables(depth):
    """`depth` tables, each holding the next at key 1: {1: {1: {...}}}."""
    data = b""
    for index in range(1, depth + 1):
        data += struct.pack("<iii", TABLE, index, 1) + struct.pack("<id", NUMBER, 1.0)
    return data + struct.pack("<i", 0)


def cyclic_form_b():
    # A form-B residual branch whose nn.ConcatTable lists the residual itself.
    tree = torch_files.cifar_model(small_state(), BLOCKS, CARDINALITY, form="B")
    block = tree.fields["modules"][3].fields["modules"][0]
    residual = block.fields["modules"][0].fields["modules"][0]
    residual.fields["modules"][0].fields["modules"].append(residual)
    return tree


def shared_batch_norm():
    # Two batch norms of one block hold the same tensors: more values than the storages.
    tree = torch_files.cifar_model(small_state(), BLOCKS, CARDINALITY)
    block = tree.fields["modules"][3].fields["modules"][0]
    layers = block.fields["modules"][0].fields["modules"][0].fields["modules"]
    layers[4].fields.update({k: layers[1].fields[k] for k in ("weight", "bias", "running_var")})
    return tree


def empty_tables(count):
    """A Lua array of `count` empty tables: 24 bytes of file, some 280 bytes of Python each."""
    entry = np.dtype(
        [("key_type", "<i4"), ("key", "<f8"), ("type", "<i4"), ("index", "<i4"), ("size", "<i4")]
    )
    entries = np.zeros(count, entry)
    entries["key_type"], entries["key"] = NUMBER, np.arange(1, count + 1)
    entries["type"], entries["index"] = TABLE, np.arange(2, count + 2)
    return struct.pack("<iii", TABLE, 1, count) + entries.tobytes()


def self_wrapping():
    wrapper = Obj("nn.DataParallelTable", modules=[])
    wrapper.fields["modules"].append(wrapper)
    return wrapper


# name -> (tree or raw bytes, share objects, text the error must contain)
CASES = {
    "view_past_storage": (RawTensor(VALUES, [5], [1]), False, "reaches beyond its storage"),
    "offset_past_storage": (RawTensor(VALUES, [2], [1], offset=4), False, "beyond its storage"),
    "stride_past_storage": (RawTensor(VALUES, [2, 2], [3, 1]), False, "beyond its storage"),
    "huge_stride": (RawTensor(VALUES, [2], [1 << 60]), False, "beyond its storage"),
    "negative_stride": (RawTensor(VALUES, [2, 2], [-2, 1]), False, "negative size, stride"),
    "negative_size": (RawTensor(VALUES, [-4], [1]), False, "negative size, stride"),
    "zero_offset": (RawTensor(VALUES, [4], [1], offset=0), False, "negative size, stride"),
    "overlapping_view": (RawTensor(VALUES, [1 << 40], [0]), False, "beyond its storage"),
    "huge_storage": (RawTensor(VALUES, [4], [1], storage_size=1 << 40), False, "declares"),
    "storage_one_past": (RawTensor(VALUES, [4], [1], storage_size=5), False, "declares 5 values"),
    "negative_storage": (RawTensor(VALUES, [4], [1], storage_size=-1), False, "declares -1"),
    "stem_past_storage": (
        model_with(weight=RawTensor(np.zeros(64 * 27), [64, 3, 3, 3], [27, 9, 3, 2])),
        False,
        "reaches beyond its storage",
    ),
    "deep_nesting": (nested_tables(10 * MAX_DEPTH), False, f"deeper than {MAX_DEPTH}"),
    "huge_table": (struct.pack("<iii", TABLE, 1, 2**31 - 1), False, "declares 2147483647"),
    "many_empty_tables": (
        empty_tables(70_000),
        False,
        "more than 65536 objects and table entries in 1680012 bytes",
    ),
    "huge_string": (struct.pack("<ii", 2, 2**31 - 1) + b"ab", False, "needs 2147483647 bytes"),
    "unknown_type": (struct.pack("<i", 99), False, "unknown type tag 99"),
    "tensor_refers_to_itself": (
        struct.pack("<ii", TORCH, 1)
        + struct.pack("<i", 3)
        + b"V 1"
        + struct.pack("<i", 17)
        + b"torch.FloatTensor"
        + struct.pack("<iqqq", 1, 1, 1, 1)
        + struct.pack("<ii", TORCH, 1),
        False,
        "refers to itself",
    ),
    "wrong_storage": (
        model_with(weight=RawTensor(np.zeros(64 * 27), [64, 3, 3, 3], [27, 9, 3, 1])),
        False,
        None,  # replaced below: the storage of the stem is a string
    ),
    "truncated": (None, False, "is not a readable Torch7 file"),
    "cyclic_modules": (cyclic_form_b(), True, "refers to itself"),
    "self_wrapping": (self_wrapping(), True, "Expected one of"),
    "shared_tensors": (shared_batch_norm(), True, "modules share tensors"),
    "bad_conv_fields": (model_with(nInputPlane="3"), False, "nInputPlane='3'"),
    "zero_groups": (model_with(groups=0), False, "groups=0"),
}


def write_case(tmp_path, name, tree, share):
    path = tmp_path / f"{name}.t7"
    if name == "truncated":
        torch_files.write_t7(path, torch_files.cifar_model(small_state(), BLOCKS, CARDINALITY))
        path.write_bytes(path.read_bytes()[:5000])
    elif name == "wrong_storage":
        # The stem's tensor header is followed by a string instead of its FloatStorage.
        good = tmp_path / "good.t7"
        torch_files.write_t7(good, tree)
        data = good.read_bytes()
        marker = b"torch.FloatStorage"
        at = data.index(marker) - 4 - 3 - 4 - 4 - 4  # type, index, "V 1", name length
        path.write_bytes(data[:at] + struct.pack("<i", 2) + struct.pack("<i", 2) + b"xy")
    elif isinstance(tree, bytes):
        path.write_bytes(tree)
    else:
        torch_files.write_t7(path, tree, share=share)
    return path


CHILD = textwrap.dedent(
    """
    import json, sys
    from resnext_tf.errors import WeightsError
    from resnext_tf.weights import read_t7
    results = {}
    for name, path in json.loads(sys.argv[1]).items():
        try:
            read_t7(path)
            results[name] = ["read", ""]
        except WeightsError as e:
            results[name] = ["WeightsError", str(e)]
        except BaseException as e:
            results[name] = [type(e).__name__, str(e)[:500]]
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """Reads every crafted file in one child process; returns {name: (path, kind, message)}."""
    folder = tmp_path_factory.mktemp("crafted")
    paths = {
        name: str(write_case(folder, name, tree, share)) for name, (tree, share, _) in CASES.items()
    }
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(paths)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # A negative return code is a signal: -11 is the segmentation fault of unchecked views.
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    return {name: (paths[name], *outcome[name]) for name in CASES}


@pytest.mark.parametrize("name", sorted(CASES))
def test_crafted_file_is_refused_naming_the_file(crafted, name):
    path, kind, message = crafted[name]
    assert kind == "WeightsError", (kind, message)
    assert path in message
    expected = CASES[name][2] or "needs a torch.FloatStorage; received str"
    assert expected in message
    assert "\n" not in message


def test_objects_and_entries_are_bounded_by_the_file_size(tmp_path):
    # 2,000,000 empty tables in a 46 MiB file once took 543 MiB; refused, the file's bytes remain.
    path = tmp_path / "tables.t7"
    path.write_bytes(empty_tables(2_000_000))
    growth, error, _ = peak_growth(
        "from resnext_tf.weights.t7file import read_t7_file", f"read_t7_file({str(path)!r})"
    )
    assert error == (
        "T7FormatError: more than 65536 objects and table entries in 48000012 bytes (one per "
        "1024 bytes, at least 65536); a model file is mostly tensor values"
    )
    assert growth < path.stat().st_size / 2**20 + 16


def test_exact_fit_views_read_the_right_values(tmp_path):
    # The last value of the storage is in range; offsets and strides pick the right values.
    path = tmp_path / "fit.t7"
    torch_files.write_t7(path, [RawTensor(np.arange(12), [2, 3], [6, 2], offset=2)])
    reader = T7Reader(path.read_bytes())
    (tensor,) = reader.read()
    np.testing.assert_array_equal(tensor, [[1, 3, 5], [7, 9, 11]])
    assert not tensor.flags.writeable
    assert reader.storage_values == 12


def test_one_value_past_the_end_is_refused(tmp_path):
    path = tmp_path / "past.t7"
    torch_files.write_t7(path, RawTensor(np.arange(12), [2, 3], [6, 2], offset=3))
    with pytest.raises(T7FormatError, match=r"reaches beyond its storage of 12 values"):
        T7Reader(path.read_bytes()).read()


def test_parameters_sharing_one_storage_are_read(tmp_path):
    # Torch7's getParameters() leaves every weight a view of one flat storage.
    state = small_state()
    path = tmp_path / "flat.t7"
    torch_files.write_t7(path, torch_files.cifar_model(state, BLOCKS, CARDINALITY), flat=True)
    converted = read_t7(path)
    assert sorted(converted) == sorted(state)
    for name, value in state.items():
        np.testing.assert_array_equal(converted[name], value, err_msg=name)


def test_functions_are_kept_as_bytes_never_run(tmp_path):
    # A serialized Lua function (type 6: index, code, upvalues) is skipped as opaque bytes.
    code = b"\x1bLua this would be bytecode"
    function = struct.pack("<iii", 6, 1, len(code)) + code + struct.pack("<i", 0)
    table = struct.pack("<iii", TABLE, 2, 1) + struct.pack("<i", 2)
    table += struct.pack("<i", 4) + b"hook" + function
    value = T7Reader(table).read()
    assert value["hook"].size == len(code)


def test_missing_file_is_a_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="missing.t7"):
        read_t7(tmp_path / "missing.t7")
