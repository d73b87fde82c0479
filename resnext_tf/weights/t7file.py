"""A bounded reader of Torch7's binary serialization (`torch.save` files, .t7).

Written from the format (torch7 File.lua and generic/Tensor.c, generic/Storage.c) instead of
using the torchfile package, because a .t7 file is untrusted input and torchfile builds every
tensor with `numpy.lib.stride_tricks.as_strided` from the sizes, strides and offset in the file
without checking them: a crafted file of a few hundred bytes makes it read (or crash on) memory
outside the storage. This reader checks every declared length against the bytes that remain,
every tensor view against its storage, and caps nesting and the number of objects and table
entries (absolutely, and against the file's size), so a file costs at most about its own size in
memory and either reads or raises `T7FormatError`.

The format: each value starts with an int32 type tag. Numbers are doubles, booleans int32,
strings an int32 length and the bytes. Tables, Torch objects and functions carry an int32
reference index, and a later occurrence of an index refers to the object already read (shared
storages, for instance). A Torch object has a version string ("V 1"), its class name and then
its data: tensors an int32 number of dimensions, int64 sizes, int64 strides (in elements), a
1-based int64 storage offset and their storage object; storages an int64 length and the raw
little-endian values; any other class (nn modules) a table of its fields. Functions are kept
as opaque bytes: nothing from a file is ever executed or unpickled.
"""

import math
import struct

import numpy as np

NIL, NUMBER, STRING, TABLE, TORCH, BOOLEAN = 0, 1, 2, 3, 4, 5
FUNCTION_TYPES = (6, 7, 8)  # function, legacy and current recursive function
# Bounds for a model file. A ResNeXt-101 of form B has some ten thousand modules; its nesting
# (module, fields, child list) goes a few dozen levels deep.
MAX_DEPTH = 128
MAX_OBJECTS = 1 << 22
MAX_TABLE_ENTRIES = 1 << 23
MAX_DIMS = 32
# An object or table entry costs 100-300 bytes of Python memory however few bytes it takes in
# the file (an empty table takes 12). A model file is mostly tensor values, with some 15 objects
# and table entries per module next to its weights, so a file may hold one per BYTES_PER_VALUE
# bytes of it, or MIN_VALUES in a smaller file.
BYTES_PER_VALUE = 1024
MIN_VALUES = 1 << 16
# Whole numbers read as int (Lua has only doubles) when they are exact.
EXACT_INT = 2**53

_INT = struct.Struct("<i")
_LONG = struct.Struct("<q")
_DOUBLE = struct.Struct("<d")

_DTYPES = {
    "Byte": np.uint8,
    "Char": np.int8,
    "Short": np.int16,
    "Int": np.int32,
    "Long": np.int64,
    "Float": np.float32,
    "Double": np.float64,
}
# torch.FloatTensor -> (torch.FloatStorage, float32); CUDA classes are saved as host values.
TENSOR_CLASSES = {}
STORAGE_CLASSES = {}
for _name, _dtype in _DTYPES.items():
    _dtype = np.dtype(_dtype).newbyteorder("<")
    for _prefix in ("torch.", "torch.Cuda"):
        _cuda_name = "" if (_prefix == "torch.Cuda" and _name == "Float") else _name
        TENSOR_CLASSES[f"{_prefix}{_cuda_name}Tensor"] = (f"{_prefix}{_cuda_name}Storage", _dtype)
        STORAGE_CLASSES[f"{_prefix}{_cuda_name}Storage"] = _dtype
UNSUPPORTED_CLASSES = (
    "torch.HalfTensor",
    "torch.HalfStorage",
    "torch.CudaHalfTensor",
    "torch.CudaHalfStorage",
)


class T7FormatError(ValueError):
    """The bytes are not a well-formed Torch7 file within this reader's bounds."""


class T7Object:
    """An instance of a Torch7 class other than a tensor or storage (an nn module).

    Fields read as attributes or items (`module.weight`, `module["weight"]`); a missing field
    is None, as in Lua.
    """

    def __init__(self, typename, fields=None):
        self._typename = typename
        self._fields = fields

    def torch_typename(self):
        return self._typename

    def _get(self, name):
        return self._fields.get(name) if isinstance(self._fields, dict) else None

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return self._get(name)

    def __getitem__(self, name):
        return self._get(name)

    def __repr__(self):
        return f"T7Object({self._typename})"


class Storage:
    """A Torch7 storage: its class name and values (a read-only view of the file's bytes)."""

    def __init__(self, typename, values):
        self.typename = typename
        self.values = values

    def __len__(self):
        return len(self.values)


class LuaFunction:
    """A serialized Lua function: kept opaque (its size only), never run."""

    def __init__(self, size, upvalues):
        self.size = size
        self.upvalues = upvalues


_PENDING = object()  # a tensor or storage being read: it cannot refer to itself


class T7Reader:
    """Reads one value from the bytes of a Torch7 binary file.

    Attributes:
      storage_values: The number of values in all distinct storages read: an upper bound of
        what the file's tensors can hold without overlapping.
    """

    def __init__(self, data):
        self.data = memoryview(data)
        self.pos = 0
        self.objects = {}
        self.table_entries = 0
        self.storage_values = 0
        self.max_values = max(MIN_VALUES, len(self.data) // BYTES_PER_VALUE)

    # Primitives ------------------------------------------------------------------------------

    def _need(self, nbytes, what):
        if nbytes < 0 or nbytes > len(self.data) - self.pos:
            raise T7FormatError(
                f"{what} needs {nbytes} bytes at byte {self.pos}, but the file has "
                f"{len(self.data) - self.pos} left"
            )

    def _unpack(self, fmt, what):
        self._need(fmt.size, what)
        (value,) = fmt.unpack_from(self.data, self.pos)
        self.pos += fmt.size
        return value

    def read_int(self, what="an int"):
        return self._unpack(_INT, what)

    def read_long(self, what="a long"):
        return self._unpack(_LONG, what)

    def read_bytes(self, what="a string"):
        size = self.read_int(f"the length of {what}")
        if size < 0:
            raise T7FormatError(f"{what} at byte {self.pos} has a negative length {size}")
        self._need(size, what)
        value = bytes(self.data[self.pos : self.pos + size])
        self.pos += size
        return value

    def read_string(self, what="a string"):
        return self.read_bytes(what).decode("utf-8", errors="replace")

    def _count_values(self):
        if len(self.objects) + self.table_entries > self.max_values:
            raise T7FormatError(
                f"more than {self.max_values} objects and table entries in {len(self.data)} "
                f"bytes (one per {BYTES_PER_VALUE} bytes, at least {MIN_VALUES}); a model file "
                "is mostly tensor values"
            )

    # Values ----------------------------------------------------------------------------------

    def read(self, depth=0):
        """Reads the next value: None, bool, int/float, str, list/dict, ndarray or objects."""
        if depth > MAX_DEPTH:
            raise T7FormatError(f"values nest deeper than {MAX_DEPTH} levels")
        start = self.pos
        kind = self.read_int("a type tag")
        if kind == NIL:
            return None
        if kind == NUMBER:
            value = self._unpack(_DOUBLE, "a number")
            if math.isfinite(value) and value.is_integer() and abs(value) < EXACT_INT:
                return int(value)
            return value
        if kind == BOOLEAN:
            return self.read_int("a boolean") == 1
        if kind == STRING:
            return self.read_string()
        if kind not in (TABLE, TORCH, *FUNCTION_TYPES):
            raise T7FormatError(f"unknown type tag {kind} at byte {start}")
        index = self.read_int("a reference index")
        if index in self.objects:
            value = self.objects[index]
            if value is _PENDING:
                raise T7FormatError(f"object {index} refers to itself while it is read")
            return value
        if len(self.objects) >= MAX_OBJECTS:
            raise T7FormatError(f"more than {MAX_OBJECTS} objects")
        self._count_values()
        if kind == TABLE:
            return self._table(index, depth)
        if kind == TORCH:
            return self._torch(index, depth)
        self.objects[index] = _PENDING
        size = len(self.read_bytes("a function's code"))
        function = LuaFunction(size, None)
        self.objects[index] = function
        function.upvalues = self.read(depth + 1)
        return function

    def _table(self, index, depth):
        size = self.read_int("a table size")
        # Each entry takes at least two type tags: a size beyond that is a lie about the file.
        if size < 0 or size > (len(self.data) - self.pos) // (2 * _INT.size):
            raise T7FormatError(f"a table at byte {self.pos} declares {size} entries")
        self.table_entries += size
        if self.table_entries > MAX_TABLE_ENTRIES:
            raise T7FormatError(f"more than {MAX_TABLE_ENTRIES} table entries")
        self._count_values()
        table = {}
        self.objects[index] = table  # registered first: a table may contain itself
        for _ in range(size):
            key = self.read(depth + 1)
            value = self.read(depth + 1)
            if isinstance(key, str | int | float | bool):
                table[key] = value
            # Tables or objects as keys do not occur in module fields; they are skipped.
        if table and all(isinstance(k, int) and not isinstance(k, bool) for k in table):
            if sorted(table) == list(range(1, len(table) + 1)):
                # A Lua array (1..n) is a list; references to it while it was read keep the
                # dict, which only matters for tables that contain themselves.
                items = [table[i] for i in range(1, len(table) + 1)]
                self.objects[index] = items
                return items
        return table

    def _torch(self, index, depth):
        version = self.read_bytes("a class version")
        if version.startswith(b"V "):
            typename = self.read_string("a class name")
        else:  # files written before versioning hold the class name here
            typename = version.decode("utf-8", errors="replace")
        if typename in UNSUPPORTED_CLASSES:
            raise T7FormatError(f"{typename} is not supported")
        if typename in TENSOR_CLASSES:
            self.objects[index] = _PENDING
            value = self._tensor(typename, depth)
        elif typename in STORAGE_CLASSES:
            self.objects[index] = _PENDING
            value = self._storage(typename)
        else:
            value = T7Object(typename)
            self.objects[index] = value
            value._fields = self.read(depth + 1)
            return value
        self.objects[index] = value
        return value

    def _storage(self, typename):
        dtype = STORAGE_CLASSES[typename]
        size = self.read_long(f"the size of a {typename}")
        if size < 0 or size > (len(self.data) - self.pos) // dtype.itemsize:
            raise T7FormatError(
                f"a {typename} at byte {self.pos} declares {size} values, more than the "
                f"{len(self.data) - self.pos} bytes left in the file hold"
            )
        values = np.frombuffer(self.data, dtype=dtype, count=size, offset=self.pos)
        self.pos += size * dtype.itemsize
        self.storage_values += size
        return Storage(typename, values)

    def _tensor(self, typename, depth):
        start = self.pos
        storage_class, dtype = TENSOR_CLASSES[typename]
        ndim = self.read_int("a tensor's number of dimensions")
        if not 0 <= ndim <= MAX_DIMS:
            raise T7FormatError(f"a {typename} at byte {start} has {ndim} dimensions")
        sizes = [self.read_long("a tensor size") for _ in range(ndim)]
        strides = [self.read_long("a tensor stride") for _ in range(ndim)]
        offset = self.read_long("a tensor offset") - 1  # 1-based in the file, 0-based here
        storage = self.read(depth + 1)
        where = f"the {typename} at byte {start} (sizes {sizes}, strides {strides}"
        where += f", storage offset {offset + 1})"
        if any(s < 0 for s in sizes) or any(s < 0 for s in strides) or offset < 0:
            raise T7FormatError(f"{where} has a negative size, stride or offset")
        numel = math.prod(sizes)
        if ndim == 0 or numel == 0:
            return np.empty(0, dtype)
        if not isinstance(storage, Storage) or storage.typename != storage_class:
            got = storage.typename if isinstance(storage, Storage) else type(storage).__name__
            raise T7FormatError(f"{where} needs a {storage_class}; received {got}")
        dims = list(zip(sizes, strides, strict=True))
        last = offset + sum((size - 1) * stride for size, stride in dims)
        # Overlapping views (more values than the storage has) are not weights, and would let
        # a small file expand into a large copy.
        if last >= len(storage) or numel > len(storage):
            raise T7FormatError(f"{where} reaches beyond its storage of {len(storage)} values")
        # The stride of a dimension of size 1 is never used; it may hold anything.
        strides = [stride * dtype.itemsize if size > 1 else 0 for size, stride in dims]
        return np.lib.stride_tricks.as_strided(
            storage.values[offset:], shape=sizes, strides=strides, writeable=False
        )


def read_t7_file(path):
    """Reads the value stored in a Torch7 binary file.

    Returns:
      (value, storage_values): the value (nn modules as `T7Object`, tensors as read-only
      NumPy views of the file's bytes, Lua arrays as lists, tables as dicts) and the number of
      values in its storages.

    Raises:
      T7FormatError: for bytes that are not a Torch7 file within the reader's bounds.
      OSError: when the file cannot be read.
    """
    with open(path, "rb") as f:
        data = f.read()
    reader = T7Reader(data)
    return reader.read(), reader.storage_values
