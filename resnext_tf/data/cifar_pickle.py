"""Unpickling a CIFAR batch file, which may come from anyone.

A pickle may name any Python callable to run while it loads, so a crafted "CIFAR" file could
run code. `_BatchUnpickler` accepts only what CIFAR batch files hold (dicts, lists, bytes, str,
ints and numpy arrays of bool, integer or float dtypes) and refuses every other global with a
DataError naming the file and the global. Even without a global, the unpickler itself can be
made to allocate out of proportion to the file or to crash, so `_scan_pickle` walks the opcodes
first and refuses those files (the MAX_PICKLE_* bounds).
"""

import io
import math
import pickle
import pickletools

import numpy as np

from resnext_tf.errors import DataError

try:
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

# Bounds of the opcode pre-scan (_scan_pickle), far above what the official files need: they
# nest six levels deep (dict, list, call, tuple, ...), keep about 2,000 items on the unpickler's
# stack (writers append lists in batches of 1000) and hold one opcode per ~800 bytes (the
# pixels are a single opcode). A file may hold MIN_PICKLE_OPCODES opcodes, or one per
# PICKLE_BYTES_PER_OPCODE bytes when that is more.
MAX_PICKLE_DEPTH = 32
MAX_PICKLE_STACK = 100_000
PICKLE_BYTES_PER_OPCODE = 64
MIN_PICKLE_OPCODES = 2**16

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


def first_line(exc):
    return (str(exc).strip().splitlines() or [""])[0]


def unpickle(blob, where):
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
            f"{first_line(exc)}); it is damaged, truncated or in another format."
        ) from None
