"""Crash-safe checkpoints of a run: model, optimizer (velocities included) and progress, and the
lock that gives a model_dir to one run at a time.

Layout under `<model_dir>/checkpoints/` (the counterpart of the original's model_<epoch>,
optimState_<epoch>, latest and model_best files):

    epoch-0003/         end of epoch 3: ckpt.index, ckpt.data-*, state.json, manifest.json
    step-000001234/     mid-epoch checkpoint after global step 1234 (only the newest is kept)
    latest              JSON pointer {"name": "epoch-0003"}
    best                JSON pointer to the checkpoint with the best validation top-1 error

A checkpoint directory is written under a temporary name private to the process, flushed with
fsync and renamed into place; the pointers are replaced with os.replace. The manifest, written
last, records the size and sha256 of every other file, so a truncated or altered checkpoint is
recognised before it is restored. A crash at any moment therefore leaves `latest` naming a
complete checkpoint, and a damaged one (disk errors, copies cut short) is skipped with a warning
in favour of the newest checkpoint that verifies.
"""

import contextlib
import ctypes
import datetime
import errno
import hashlib
import json
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
import warnings

import tensorflow as tf

from resnext_tf.errors import CheckpointError, LockedError

CHECKPOINT_SUBDIR = "checkpoints"
PREFIX = "ckpt"  # tf.train.Checkpoint file prefix inside each checkpoint directory
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
LATEST = "latest"
BEST = "best"
LOCK_FILE = "run.lock"
_TMP_PREFIX = ".tmp-"
_EPOCH_PREFIX = "epoch-"
_STEP_PREFIX = "step-"
_HASH_CHUNK = 1 << 20


def epoch_name(epoch):
    """Directory name of the end-of-epoch checkpoint of `epoch`."""
    return f"{_EPOCH_PREFIX}{epoch:04d}"


def step_name(global_step):
    """Directory name of a mid-epoch checkpoint taken after `global_step` steps."""
    return f"{_STEP_PREFIX}{global_step:09d}"


def _is_checkpoint_name(name):
    return name.startswith((_EPOCH_PREFIX, _STEP_PREFIX))


def temp_name(name):
    """A hidden sibling name for writing `name`, private to this process (pid and a random
    token), so that runs never touch each other's files in progress."""
    return f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{name}"


# ------------------------------------------------------------------------------ atomic writes


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path):
    # Makes a rename inside `path` durable. Not every platform or file system can open or sync
    # a directory; the rename is still atomic there, only its durability is up to the system.
    with contextlib.suppress(OSError):
        _fsync(path)


def _fsync_tree(directory):
    for root, _, files in os.walk(directory):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync_dir(root)


def replace_file(tmp, path):
    """Publishes the written and synced file `tmp` as `path` (atomic rename), then syncs the
    directory so that the rename itself survives a crash."""
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


def write_text_atomic(path, text):
    """Replaces the file `path` with `text`: readers see the old or the new content, never a
    part. The data is on disk before the rename, and the rename before this returns."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, temp_name(os.path.basename(path)))
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        replace_file(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _write_json_atomic(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


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


def _move_into_place(tmp, final):
    """Renames the complete directory `tmp` to `final`; an existing `final` is replaced.

    The replacement swaps the two atomically where the system can, so `final` always names a
    complete checkpoint; elsewhere the old one is renamed aside first, and a crash in between
    leaves `final` missing, which the restore side treats as a damaged checkpoint.
    """
    if not os.path.exists(final):
        os.rename(tmp, final)
    elif _exchange(tmp, final):
        shutil.rmtree(tmp)
    else:
        aside = os.path.join(
            os.path.dirname(final), temp_name("replaced-" + os.path.basename(final))
        )
        os.rename(final, aside)
        os.rename(tmp, final)
        shutil.rmtree(aside)
    _fsync_dir(os.path.dirname(final))


# ----------------------------------------------------------------------------- verification


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(directory):
    files = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        files[name] = {"size": os.path.getsize(path), "sha256": _sha256(path)}
    with open(os.path.join(directory, MANIFEST_FILE), "w", encoding="utf-8") as f:
        json.dump({"files": files}, f, indent=1, sort_keys=True)


def _verify_manifest(checkpoint_dir):
    try:
        files = _read_json(os.path.join(checkpoint_dir, MANIFEST_FILE))["files"]
        entries = [(name, int(e["size"]), str(e["sha256"])) for name, e in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST_FILE} is unreadable"
    names = [name for name, _, _ in entries]
    # Only plain names of this directory: a manifest from elsewhere must not send the check
    # to other files.
    if any(os.path.basename(n) != n or n in ("", ".", "..") for n in names) or not (
        STATE_FILE in names and f"{PREFIX}.index" in names
    ):
        return f"{MANIFEST_FILE} is malformed"
    for name, size, sha256 in entries:
        path = os.path.join(checkpoint_dir, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        actual = os.path.getsize(path)
        if actual != size:
            return f"{name} has {actual} bytes, expected {size}"
        if _sha256(path) != sha256:
            return f"{name} does not match its sha256"
    return None


def _verify_by_reading(checkpoint_dir):
    # Checkpoints written before manifests existed: read every tensor, which checks the index
    # and the lengths and checksums TensorFlow keeps for each tensor.
    try:
        reader = tf.train.load_checkpoint(os.path.join(checkpoint_dir, PREFIX))
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, LookupError, ValueError, OSError) as e:
        return f"its tensors cannot be read ({type(e).__name__}: {e})"
    return None


def _signature(checkpoint_dir):
    # Changes whenever a file of the checkpoint is replaced, resized or rewritten.
    entries = []
    for name in sorted(os.listdir(checkpoint_dir)):
        st = os.stat(os.path.join(checkpoint_dir, name))
        entries.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
    return os.path.realpath(checkpoint_dir), tuple(entries)


# Checkpoints found intact, by signature: one process often resolves the same checkpoint more
# than once (class count, then weights) and need not hash it again.
_VERIFIED = set()


def verify(checkpoint_dir):
    """Checks that `checkpoint_dir` holds a complete, unaltered checkpoint.

    Returns:
        None when it does, else a short description of the damage.
    """
    if not os.path.isdir(checkpoint_dir):
        return "it does not exist"
    try:
        signature = _signature(checkpoint_dir)
    except OSError as e:
        return f"its files cannot be listed ({type(e).__name__})"
    if signature in _VERIFIED:
        return None
    problem = _verify_files(checkpoint_dir)
    if problem is None:
        _VERIFIED.add(signature)
    return problem


def _verify_files(checkpoint_dir):
    try:
        state = _read_json(os.path.join(checkpoint_dir, STATE_FILE))
    except (OSError, ValueError) as e:
        return f"{STATE_FILE} is unreadable ({type(e).__name__})"
    if not isinstance(state, dict):
        return f"{STATE_FILE} is not a record"
    if os.path.exists(os.path.join(checkpoint_dir, MANIFEST_FILE)):
        return _verify_manifest(checkpoint_dir)
    return _verify_by_reading(checkpoint_dir)


def _pointer_target(directory, which):
    """(name, problem) of the pointer file `which`: name None when it is missing or damaged."""
    path = os.path.join(directory, which)
    if not os.path.lexists(path):
        return None, "is missing"
    try:
        name = _read_json(path)["name"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"is unreadable ({type(e).__name__})"
    if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
        return None, f"names {name!r}, not a checkpoint of this folder"
    return name, None


def _recency(directory, name):
    state = _read_json(os.path.join(directory, name, STATE_FILE))
    return int(state.get("global_step", -1)), bool(state.get("epoch_complete")), name


def holds_checkpoints(directory):
    """Whether the checkpoints/ folder `directory` holds any checkpoint or pointer, damaged or
    not."""
    if not os.path.isdir(directory):
        return False
    return any(_is_checkpoint_name(n) or n in (LATEST, BEST) for n in os.listdir(directory))


def newest_valid(directory):
    """The checkpoint of the checkpoints/ folder `directory` to continue from.

    `latest` when it verifies; otherwise, with a warning that names the damage, the newest
    checkpoint (by global step) that verifies.

    Returns:
        A checkpoint directory, or None when `directory` holds no checkpoint at all.

    Raises:
        CheckpointError: when there are checkpoints but none verifies.
    """
    if not holds_checkpoints(directory):
        return None
    damaged = []
    name, problem = _pointer_target(directory, LATEST)
    if name is not None:
        problem = verify(os.path.join(directory, name))
        if problem is None:
            return os.path.join(directory, name)
        damaged.append(f"{name} ({LATEST}; {problem})")
    else:
        damaged.append(f"{LATEST} ({problem})")
    ranked = []
    for candidate in sorted(os.listdir(directory)):
        if not _is_checkpoint_name(candidate) or candidate == name:
            continue
        try:
            ranked.append(_recency(directory, candidate))
        except (OSError, ValueError, TypeError, AttributeError) as e:
            damaged.append(f"{candidate} ({STATE_FILE} is unreadable: {type(e).__name__})")
    for *_, candidate in sorted(ranked, reverse=True):
        path = os.path.join(directory, candidate)
        problem = verify(path)
        if problem is None:
            warnings.warn(
                f"Damaged checkpoint in {directory}: {'; '.join(damaged)}. Using {path}, the "
                "newest checkpoint that verifies.",
                stacklevel=2,
            )
            return path
        damaged.append(f"{candidate} ({problem})")
    raise CheckpointError(
        f"No checkpoint in {directory} can be restored: {'; '.join(damaged)}. Remove the "
        f"damaged checkpoints, or the whole folder (or pass --resume=none --overwrite) to "
        "start over."
    )


def _verified(checkpoint_dir, named_by):
    problem = verify(checkpoint_dir)
    if problem:
        raise CheckpointError(
            f"The checkpoint {checkpoint_dir} ({named_by}) is damaged: {problem}. Remove it, or "
            "name the model_dir or checkpoints/latest to use the newest checkpoint that verifies."
        )
    return checkpoint_dir


def find_checkpoint(path):
    """Resolves a model_dir, its checkpoints/ folder, a checkpoint directory or a pointer file.

    A checkpoint directory, or the `best` pointer, is used as named and must verify. A
    model_dir, a checkpoints/ folder or the `latest` pointer gives `newest_valid` of the folder:
    a damaged newest checkpoint is skipped with a warning.

    Args:
        path: any of these; a pointer is the `latest` or `best` file of a checkpoints/ folder.

    Returns:
        The checkpoint directory (holding state.json), or None when `path` holds none.

    Raises:
        CheckpointError: when the checkpoint named is damaged, or none of the folder verifies.
    """
    if os.path.isfile(os.path.join(path, STATE_FILE)) or os.path.isfile(
        os.path.join(path, MANIFEST_FILE)
    ):
        return _verified(path, "named directly")
    base, parent = os.path.basename(path), os.path.dirname(path)
    if base == BEST and os.path.isfile(path):
        name, problem = _pointer_target(parent, BEST)
        if name is None:
            raise CheckpointError(f"The pointer {path} {problem}; name a checkpoint directory.")
        return _verified(os.path.join(parent, name), f"named by {path}")
    if base == LATEST and os.path.isfile(path):
        return newest_valid(parent)
    for directory in (os.path.join(path, CHECKPOINT_SUBDIR), path):
        if holds_checkpoints(directory):
            return newest_valid(directory)
    return None


def read_state(checkpoint_dir):
    """Returns the progress record (epoch, step, metrics, config) saved with a checkpoint."""
    return _read_json(os.path.join(checkpoint_dir, STATE_FILE))


def _read(objects, checkpoint_dir, partial):
    try:
        status = tf.train.Checkpoint(**objects).read(os.path.join(checkpoint_dir, PREFIX))
        if partial:
            status.expect_partial()
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:
        raise ValueError(
            f"The checkpoint {checkpoint_dir!r} does not match the {sorted(objects)} being "
            f"restored (another architecture or class count?): {e}"
        ) from e


def restore_model_weights(model, checkpoint_dir):
    """Loads only the model variables of one of our checkpoints (optimizer state ignored).

    Raises:
        ValueError: when the checkpoint lacks a variable of `model` or has other shapes.
    """
    _read({"model": model}, checkpoint_dir, partial=True)


# ----------------------------------------------------------------------------------- lock


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _flock(fd):
    """True: this fd now holds the lock; False: another open file holds it; None: the file
    system has no flock (liveness then comes from the pid)."""
    try:
        import fcntl  # noqa: PLC0415 (POSIX only)
    except ImportError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        if e.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            return None
        raise
    return True


def _read_holder(fd, attempts=20):
    # The holder writes its record right after taking the lock; wait briefly for it.
    for attempt in range(attempts):
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        if raw.strip():
            try:
                holder = json.loads(raw)
                if isinstance(holder, dict):
                    return holder
            except ValueError:
                pass
        if attempt + 1 < attempts:
            time.sleep(0.05)
    return {}


def _describe(holder):
    if not holder:
        return "an unknown process (its lock record is empty)"
    return f"pid {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started')})"


class ModelDirLock:
    """Gives a model_dir to one run: an exclusive flock on `<model_dir>/run.lock`, which also
    holds the owner's record {pid, host, started}.

    The kernel drops a flock when its process dies, however it dies, so on the same host a lock
    file whose flock is free belongs to a dead run and is taken over with a warning. A record of
    another host whose flock is free is refused: whether that run still goes depends on the file
    system sharing locks between hosts, which cannot be checked from here. Where the file system
    has no flock at all, a same-host record is live while its pid is.

    Only the writer of a model_dir takes the lock: the chief of a multi-worker run (the other
    workers write nothing there), not --test_only or exports, which only read. The lock works on
    local and network POSIX file systems; a model_dir must be one (see TrainConfig).
    """

    def __init__(self, model_dir):
        self.model_dir = model_dir
        self.path = os.path.join(model_dir, LOCK_FILE)
        self._fd = None

    def acquire(self):
        """Takes the lock.

        Raises:
            LockedError: when another live run holds the model_dir (the message names it).
        """
        if self._fd is not None:
            raise LockedError(f"model_dir={self.model_dir!r} is already locked by this object.")
        os.makedirs(self.model_dir, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if self._take(fd):
                    self._fd = fd
                    return self
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the file was removed or replaced meanwhile: try the new one

    def _take(self, fd):
        held = _flock(fd)
        if held is False:
            self._refuse(_read_holder(fd), "")
        try:
            same_file = os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            same_file = False
        if not same_file:
            return False  # released (unlinked) between our open and our flock
        previous = _read_holder(fd, attempts=1)
        if previous:
            host = socket.gethostname()
            if previous.get("host") != host:
                self._refuse(
                    previous,
                    f" This host ({host}) cannot tell whether it still runs; if it has ended, "
                    f"remove {self.path}.",
                )
            pid = previous.get("pid")
            if held is None and pid != os.getpid() and isinstance(pid, int) and _pid_alive(pid):
                self._refuse(previous, "")
            warnings.warn(
                f"Taking over the lock of model_dir={self.model_dir!r} left by "
                f"{_describe(previous)}, which no longer runs.",
                stacklevel=4,
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        return True

    def _refuse(self, holder, advice):
        raise LockedError(
            f"model_dir={self.model_dir!r} is in use by another run: {_describe(holder)}. "
            f"Wait for it to end or pass another --model_dir.{advice}"
        )

    def release(self):
        """Removes the lock file and drops the lock (a no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            # Removed while still locked, so that no other run can take the old file meanwhile.
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
        finally:
            os.close(fd)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()


# -------------------------------------------------------------------------------- manager


class CheckpointManager:
    """Saves and restores the trackable `objects` of a run under `<model_dir>/checkpoints`.

    Writing is meant to happen under a `ModelDirLock` of model_dir (the trainer takes it); the
    manager itself writes nothing until `save`, `remove_temporaries` or `remove_all`.

    Args:
        model_dir: run directory.
        objects: name -> trackable (keras model, optimizer, tf.Variable), as for
            tf.train.Checkpoint.
        is_chief: only the chief writes into model_dir. Other workers of a multi-worker run
            still call `save` (TensorFlow requires every worker to take part) and write into a
            temporary directory that is deleted at once.
        keep: number of end-of-epoch checkpoints kept; 0 keeps all. The ones `latest` and
            `best` point to are always kept.
    """

    def __init__(self, model_dir, objects, is_chief=True, keep=5):
        self.model_dir = model_dir
        self.directory = os.path.join(model_dir, CHECKPOINT_SUBDIR)
        self.is_chief = is_chief
        self.keep = keep
        self._objects = objects

    def _pointer(self, which):
        name, _ = _pointer_target(self.directory, which)
        return {"name": name} if name else None

    def latest(self):
        """Path `latest` names (unverified), or None."""
        pointer = self._pointer(LATEST)
        return os.path.join(self.directory, pointer["name"]) if pointer else None

    def best(self):
        """Path `best` names (unverified), or None."""
        pointer = self._pointer(BEST)
        return os.path.join(self.directory, pointer["name"]) if pointer else None

    def newest_valid(self):
        """The checkpoint to resume from (see `newest_valid`), or None when there is none."""
        return newest_valid(self.directory)

    def holds_checkpoints(self):
        """Whether model_dir holds checkpoints (of this run or another), damaged or not."""
        return holds_checkpoints(self.directory)

    def save(self, name, state, is_best=False):
        """Writes checkpoint `name` atomically and points `latest` (and maybe `best`) at it.

        A checkpoint already under `name` (the same training position reached again, e.g. a
        rerun from an older checkpoint) is replaced by the new one.

        Args:
            name: directory name, from `epoch_name` or `step_name`.
            state: JSON-serialisable progress record stored as state.json.
            is_best: also point `best` at this checkpoint.

        Returns:
            The checkpoint directory (None on non-chief workers).
        """
        if not self.is_chief:
            scratch = tempfile.mkdtemp(prefix="resnext_ckpt_")
            try:
                tf.train.Checkpoint(**self._objects).write(os.path.join(scratch, PREFIX))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return None
        os.makedirs(self.directory, exist_ok=True)
        final = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, temp_name(name))
        os.makedirs(tmp)
        try:
            tf.train.Checkpoint(**self._objects).write(os.path.join(tmp, PREFIX))
            with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
                json.dump(state, f, indent=1, sort_keys=True)
            _write_manifest(tmp)  # last: it vouches for the files above
            _fsync_tree(tmp)
            _move_into_place(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _write_json_atomic(os.path.join(self.directory, LATEST), {"name": name})
        if is_best:
            _write_json_atomic(os.path.join(self.directory, BEST), {"name": name})
        self._apply_retention()
        return final

    def restore(self, checkpoint_dir):
        """Restores every object from `checkpoint_dir` and returns its state record.

        Raises:
            ValueError: when the checkpoint does not match the objects (another model).
        """
        _read(self._objects, checkpoint_dir, partial=False)
        return read_state(checkpoint_dir)

    def _apply_retention(self):
        protected = {(self._pointer(which) or {}).get("name") for which in (LATEST, BEST)}
        names = sorted(os.listdir(self.directory))
        epochs = [n for n in names if n.startswith(_EPOCH_PREFIX)]
        stale = [n for n in names if n.startswith(_STEP_PREFIX)]
        if self.keep:
            stale += epochs[: -self.keep]
        for name in stale:
            if name not in protected:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    def remove_temporaries(self):
        """Deletes what interrupted writes left in model_dir and checkpoints/ (temporary names
        are never referenced by a pointer). Only safe under the model_dir lock: another run's
        temporaries would be files in progress."""
        for directory in (self.model_dir, self.directory):
            if not os.path.isdir(directory):
                continue
            for name in os.listdir(directory):
                path = os.path.join(directory, name)
                # Older versions named their temporary files `<name>.tmp-<pid>`.
                older = directory == self.directory and _TMP_PREFIX in name
                if name.startswith(_TMP_PREFIX) or older:
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            os.remove(path)

    def remove_all(self):
        """Deletes every checkpoint and pointer (for --overwrite), under the model_dir lock.

        The folder is first renamed to a temporary name, so that an interrupted removal never
        leaves a half-deleted checkpoint under its own name.
        """
        if not os.path.isdir(self.directory):
            return
        doomed = os.path.join(self.model_dir, temp_name(CHECKPOINT_SUBDIR))
        os.rename(self.directory, doomed)
        _fsync_dir(self.model_dir)
        shutil.rmtree(doomed)
