"""The lock that gives a model_dir to one run at a time."""

import contextlib
import datetime
import errno
import json
import os
import socket
import stat
import time
import warnings

from resnext_tf.errors import CheckpointError, LockedError

LOCK_FILE = "run.lock"


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


def _unusable(model_dir, problem, advice="Pass another --model_dir."):
    return CheckpointError(f"model_dir={model_dir!r} cannot hold a run: {problem}. {advice}")


def _open_lock_file(model_dir, path):
    """A descriptor of the lock file `path`, created if missing: never through a symbolic link
    (its target would be overwritten), never a FIFO, device or folder.

    Raises:
        CheckpointError: model_dir is not a writable folder, or `path` is not a regular file.
    """
    try:
        os.makedirs(model_dir, exist_ok=True)
    except FileExistsError as e:
        raise _unusable(model_dir, "it exists and is not a folder") from e
    except OSError as e:
        raise _unusable(model_dir, f"it cannot be created ({e.strerror or e})") from e
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        problem = _not_regular(path)
        if problem:
            raise _not_a_lock(model_dir, path, problem) from e
        raise _unusable(
            model_dir,
            f"its lock file {path} cannot be created or opened ({e.strerror or e})",
            "Make it writable, or pass another --model_dir.",
        ) from e
    problem = _not_regular(path, os.fstat(fd))
    if problem:
        os.close(fd)
        raise _not_a_lock(model_dir, path, problem)
    return fd


def _not_regular(path, info=None):
    """What `path` (or the open file of `info`) is when it is there and not a regular file."""
    try:
        mode = (info or os.lstat(path)).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    return "is a folder" if stat.S_ISDIR(mode) else "is not a regular file (a FIFO or device)"


def _not_a_lock(model_dir, path, problem):
    return CheckpointError(
        f"model_dir={model_dir!r} cannot be locked: {path} {problem}, not a lock file of a run. "
        "Remove it (a run's lock file holds only the record of the run that holds model_dir), "
        "or pass another --model_dir."
    )


def _describe(holder):
    if not holder:
        return "an unknown process (its lock record is empty)"
    return f"pid {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started')})"


class ModelDirLock:
    """Gives a model_dir to one run: an exclusive flock on `<model_dir>/run.lock`, which also
    holds the owner's record {pid, host, started} (docs/training.md, "One run per model_dir").

    The kernel drops a dead process's flock, so a free lock left on this host is taken over
    with a warning; one of another host is refused, as flocks need not cross hosts. Without
    flock, a same-host record is live while its pid is.
    """

    def __init__(self, model_dir):
        self.model_dir = model_dir
        self.path = os.path.join(model_dir, LOCK_FILE)
        self._fd = None

    def acquire(self):
        """Takes the lock.

        Raises:
            LockedError: when another live run holds the model_dir (the message names it).
            CheckpointError: model_dir is not a writable folder, or its lock file is not a
                regular file (a symbolic link, FIFO, folder).
        """
        if self._fd is not None:
            raise LockedError(f"model_dir={self.model_dir!r} is already locked by this object.")
        while True:
            fd = _open_lock_file(self.model_dir, self.path)
            try:
                if self._take(fd):
                    self._fd = fd
                    return self
            except OSError as e:
                os.close(fd)
                raise _unusable(
                    self.model_dir,
                    f"its lock file {self.path} cannot be written ({e.strerror or e})",
                ) from e
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the file was removed or replaced meanwhile: try the new one

    def _take(self, fd):
        held = _flock(fd)
        if held is False:
            self._refuse(_read_holder(fd), "")
        try:
            same_file = os.path.samestat(os.fstat(fd), os.lstat(self.path))
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
