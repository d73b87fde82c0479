"""Writing a run's checkpoints: model, optimizer (velocities included) and progress.

Each is written under a temporary name of the process, manifest last, synced and renamed into
place, and the pointers replaced atomically, so a crash leaves `latest` naming a complete one.
`resnext_tf.checkpoints` has the layout and the reading side.
"""

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile

import tensorflow as tf

from resnext_tf import checkpoints, fileio
from resnext_tf.checkpoints import BEST, CHECKPOINT_SUBDIR, LATEST, PREFIX, STATE_FILE
from resnext_tf.errors import CheckpointError
from resnext_tf.training import run_log

# What a run writes under checkpoints/: the folders of `epoch_name` and `step_name`, holding
# the files of tf.train.Checkpoint.write, state.json and manifest.json; small pointer files.
_CHECKPOINT_NAME = re.compile(
    rf"{checkpoints.EPOCH_PREFIX}\d{{4,}}|{checkpoints.STEP_PREFIX}\d{{9,}}"
)
_CHECKPOINT_FILE = re.compile(
    rf"{PREFIX}\.index|{PREFIX}\.data-\d{{5}}-of-\d{{5}}|{re.escape(STATE_FILE)}|"
    rf"{re.escape(checkpoints.MANIFEST_FILE)}"
)
POINTER_MAX_BYTES = 4096


def foreign_checkpoint_file(directory):
    """(path, why) of the first entry of the checkpoints/ folder `directory` that a run did not
    write, or None (also when there is no such folder). Follows no symbolic link."""
    mode = fileio.lstat_mode(directory)
    if mode is None:
        return None
    if not stat.S_ISDIR(mode):
        link = stat.S_ISLNK(mode)
        return (
            directory,
            "is a symbolic link (--overwrite follows none)" if link else "is not a folder",
        )
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        mode = fileio.lstat_mode(path) or 0
        if fileio.TMP_PREFIX in name:
            continue  # an interrupted write of a run (`remove_temporaries`)
        if name in (LATEST, BEST):
            if not (stat.S_ISREG(mode) and os.lstat(path).st_size <= POINTER_MAX_BYTES):
                return path, "is not a checkpoint pointer"
        elif not (_CHECKPOINT_NAME.fullmatch(name) and stat.S_ISDIR(mode)):
            return path, "is not a checkpoint of a run"
        else:
            for inner in sorted(os.listdir(path)):
                inner_path = os.path.join(path, inner)
                if not (
                    _CHECKPOINT_FILE.fullmatch(inner)
                    and stat.S_ISREG(fileio.lstat_mode(inner_path) or 0)
                ):
                    return inner_path, "is not a file of a checkpoint"
    return None


def _write_manifest(directory):
    files = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        files[name] = {"size": os.path.getsize(path), "sha256": fileio.sha256_of(path)}
    with open(os.path.join(directory, checkpoints.MANIFEST_FILE), "w", encoding="utf-8") as f:
        json.dump({"files": files}, f, indent=1, sort_keys=True)


class CheckpointManager:
    """Saves and restores the trackable `objects` of a run under `<model_dir>/checkpoints`.

    Writes (`save`, `remove_temporaries`, `remove_all`) belong under the model_dir's
    `ModelDirLock`, which the trainer takes.

    Args:
        model_dir: run directory.
        objects: name -> trackable, as for tf.train.Checkpoint.
        is_chief: only the chief writes into model_dir; the other workers still take part in
            `save` (TensorFlow requires it), into a temporary directory deleted at once.
        keep: end-of-epoch checkpoints kept (0: all), besides those `latest` and `best` name.
    """

    def __init__(self, model_dir, objects, is_chief=True, keep=5):
        self.model_dir = model_dir
        self.directory = os.path.join(model_dir, CHECKPOINT_SUBDIR)
        self.is_chief = is_chief
        self.keep = keep
        self._objects = objects

    def _target(self, which):
        name, _ = checkpoints.pointer_target(self.directory, which)
        return os.path.join(self.directory, name) if name else None

    def latest(self):
        """Path `latest` names (unverified), or None."""
        return self._target(LATEST)

    def best(self):
        """Path `best` names (unverified), or None."""
        return self._target(BEST)

    def newest_valid(self):
        """The checkpoint to resume from (see `newest_valid`), or None when there is none."""
        return checkpoints.newest_valid(self.directory)

    def holds_checkpoints(self):
        """Whether model_dir holds checkpoints (of this run or another), damaged or not."""
        return checkpoints.holds_checkpoints(self.directory)

    def save(self, name, state, is_best=False):
        """Writes checkpoint `name` atomically and points `latest` (and maybe `best`) at it.

        A checkpoint already under `name` (the same position reached again) is replaced.

        Args:
            name: directory name, from `epoch_name` or `step_name`.
            state: JSON-serialisable progress record stored as state.json.
            is_best: also point `best` at this checkpoint.

        Returns:
            The checkpoint directory (None on non-chief workers).

        Raises:
            CheckpointError: the file system refused a write (full, read-only, no
                permission); the checkpoints saved before are left as they were.
        """
        try:
            return self._save(name, state, is_best)
        except (OSError, tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError) as e:
            reason = e.strerror if isinstance(e, OSError) else e.message.split(" [Op:")[0]
            raise CheckpointError(
                f"Cannot save the checkpoint {name} in {self.directory}: "
                f"{(reason or str(e)).rsplit('; ', 1)[-1]}. The checkpoints saved before are "
                "intact: free space (or make the folder writable) and rerun the same command "
                "to continue from the newest of them."
            ) from e

    def _save(self, name, state, is_best):
        if not self.is_chief:
            scratch = tempfile.mkdtemp(prefix="resnext_ckpt_")
            try:
                tf.train.Checkpoint(**self._objects).write(os.path.join(scratch, PREFIX))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return None
        os.makedirs(self.directory, exist_ok=True)
        final = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, fileio.temp_name(name))
        os.makedirs(tmp)
        try:
            tf.train.Checkpoint(**self._objects).write(os.path.join(tmp, PREFIX))
            with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
                json.dump(state, f, indent=1, sort_keys=True)
            _write_manifest(tmp)  # last: it vouches for the files above
            fileio.fsync_tree(tmp)
            fileio.publish_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fileio.write_json_atomic(os.path.join(self.directory, LATEST), {"name": name})
        if is_best:
            fileio.write_json_atomic(os.path.join(self.directory, BEST), {"name": name})
        self._apply_retention()
        return final

    def restore(self, checkpoint_dir):
        """Restores every object from `checkpoint_dir` and returns its state record.

        Raises:
            ValueError: when the checkpoint does not match the objects (another model).
        """
        checkpoints.read_objects(self._objects, checkpoint_dir, partial=False)
        return checkpoints.read_state(checkpoint_dir)

    def _apply_retention(self):
        protected = {checkpoints.pointer_target(self.directory, w)[0] for w in (LATEST, BEST)}
        names = sorted(os.listdir(self.directory))
        epochs = [n for n in names if n.startswith(checkpoints.EPOCH_PREFIX)]
        stale = [n for n in names if n.startswith(checkpoints.STEP_PREFIX)]
        if self.keep:
            stale += epochs[: -self.keep]
        for name in stale:
            if name not in protected:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    def remove_temporaries(self):
        """Deletes what interrupted writes left in model_dir and checkpoints/; only under the
        model_dir lock, since another run's temporaries are files in progress."""
        for directory in (self.model_dir, self.directory):
            if not os.path.isdir(directory):
                continue
            for name in os.listdir(directory):
                path = os.path.join(directory, name)
                # Older versions named their temporary files `<name>.tmp-<pid>`.
                older = directory == self.directory and fileio.TMP_PREFIX in name
                if name.startswith(fileio.TMP_PREFIX) or older:
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            os.remove(path)

    def remove_all(self):
        """Deletes what a run wrote in model_dir, for --overwrite, under the model_dir lock:
        every checkpoint and pointer, train_log.csv and the TensorBoard events.

        The checkpoints/ folder is renamed away first: an interrupted removal leaves no half
        checkpoint.

        Raises:
            CheckpointError: naming the first of them that a run did not write, or a symbolic
                link among them (nothing is deleted then).
        """
        foreign = foreign_checkpoint_file(self.directory)
        foreign = foreign or run_log.foreign_log_file(self.model_dir)
        if foreign:
            raise CheckpointError(
                f"--overwrite refused: {foreign[0]} {foreign[1]}, and --overwrite deletes only "
                f"what a run wrote in model_dir={self.model_dir!r} (checkpoints/, train_log.csv, "
                f"tensorboard/). Move it out of model_dir, or pass another --model_dir."
            )
        if fileio.lstat_mode(self.directory) is not None:
            doomed = os.path.join(self.model_dir, fileio.temp_name(CHECKPOINT_SUBDIR))
            os.rename(self.directory, doomed)
            fileio.fsync_dir(self.model_dir)
            shutil.rmtree(doomed)
        run_log.remove_logs(self.model_dir)
