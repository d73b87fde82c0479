"""Crash-safe file writes and content hashes, shared by checkpoints, logs, weights and exports.

A file or folder becomes visible only by a rename, after its data is synced, under a temporary
name private to the process (pid and a random token); the folder is synced after the rename.
"""

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import secrets
import shutil
import stat
import sys

TMP_PREFIX = ".tmp-"
_CHUNK = 1 << 20


def temp_name(name):
    """A hidden sibling name for writing `name`, private to this process."""
    return f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{name}"


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path):
    """Makes a rename inside `path` durable. Not every platform or file system can open or sync
    a folder; the rename is still atomic there, only its durability is up to the system."""
    with contextlib.suppress(OSError):
        fsync_path(path)


def fsync_tree(directory):
    for root, _, files in os.walk(directory):
        for name in files:
            fsync_path(os.path.join(root, name))
        fsync_dir(root)


def replace_file(tmp, path):
    """Publishes the written and synced file `tmp` as `path` (atomic rename)."""
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; when the block ends without an error, the file
    written there is synced and renamed onto `path`; otherwise it is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, temp_name(os.path.basename(path)))
    try:
        yield tmp
        fsync_path(tmp)
        replace_file(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_text_atomic(path, text):
    """Replaces the file `path` with `text`; readers never see a part."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def write_json_atomic(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sha256_of(path):
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _exchange(a, b):
    """Swaps two directory entries in one atomic step (Linux renameat2 RENAME_EXCHANGE).

    Returns:
        False where the system or file system cannot do it (nothing was changed).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), a)


def publish_dir(tmp, final, replace=True):
    """Renames the complete folder `tmp` to `final`.

    An existing `final` is replaced when `replace` (else FileExistsError): swapped atomically
    where the system can, elsewhere renamed aside first (a crash then may leave none).
    """
    if not os.path.exists(final):
        os.rename(tmp, final)  # fails rather than merge if another writer got there first
    elif not replace:
        raise FileExistsError(f"{final} exists; pass overwrite=True to replace it.")
    elif _exchange(tmp, final):
        shutil.rmtree(tmp)
    else:
        aside = os.path.join(os.path.dirname(final), temp_name("old-" + os.path.basename(final)))
        os.rename(final, aside)
        os.rename(tmp, final)
        shutil.rmtree(aside)
    fsync_dir(os.path.dirname(final))


def lstat_mode(path):
    """The mode of `path` itself (a symbolic link's, not its target's), None if nothing is there."""
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return None


def read_limited(path, limit, follow_symlinks=True):
    """The bytes of the regular file `path`, refusing more than `limit` of them.

    Opened without blocking (a FIFO would wait forever) and checked to be a regular file (a
    device never ends) before reading at most limit + 1 bytes, even from a growing file.

    Raises:
      OSError: the file cannot be opened or read, is not a regular file (or, without
        `follow_symlinks`, is a symbolic link), or holds more than `limit` bytes.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "is not a regular file", path)
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"{info.st_size} bytes exceed the size limit {limit}", path)
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, min(_CHUNK, limit + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise OSError(errno.EFBIG, f"grew past the size limit {limit} while it was read", path)
        return b"".join(chunks)
    finally:
        os.close(fd)
