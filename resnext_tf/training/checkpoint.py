"""Crash-safe checkpoints of a run: model, optimizer (velocities included) and progress.

Layout under `<model_dir>/checkpoints/` (the counterpart of the original's model_<epoch>,
optimState_<epoch>, latest and model_best files):

    epoch-0003/         end of epoch 3: ckpt.index, ckpt.data-*, state.json
    step-000001234/     mid-epoch checkpoint after global step 1234 (only the newest is kept)
    latest              JSON pointer {"name": "epoch-0003"}
    best                JSON pointer to the checkpoint with the best validation top-1 error

A checkpoint directory is written under a temporary name, flushed with fsync and renamed into
place; the pointers are replaced with os.replace. A crash at any moment therefore leaves `latest`
naming a complete checkpoint. Checkpoint directories are never modified after the rename.
"""

import json
import os
import shutil
import tempfile

import tensorflow as tf

CHECKPOINT_SUBDIR = "checkpoints"
PREFIX = "ckpt"  # tf.train.Checkpoint file prefix inside each checkpoint directory
STATE_FILE = "state.json"
LATEST = "latest"
BEST = "best"
_TMP_PREFIX = ".tmp-"
_EPOCH_PREFIX = "epoch-"
_STEP_PREFIX = "step-"


def epoch_name(epoch):
    """Directory name of the end-of-epoch checkpoint of `epoch`."""
    return f"{_EPOCH_PREFIX}{epoch:04d}"


def step_name(global_step):
    """Directory name of a mid-epoch checkpoint taken after `global_step` steps."""
    return f"{_STEP_PREFIX}{global_step:09d}"


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(directory):
    for root, _, files in os.walk(directory):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root)


def _write_json_atomic(path, obj):
    tmp = f"{path}{_TMP_PREFIX}{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(os.path.dirname(path))


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def find_checkpoint(path):
    """Resolves a model_dir, its checkpoints/ folder, a checkpoint directory or a pointer file.

    Args:
        path: any of these; a pointer is the `latest` or `best` file of a checkpoints/ folder.

    Returns:
        The checkpoint directory (holding state.json), or None when `path` holds none.
    """
    if os.path.isfile(os.path.join(path, STATE_FILE)):
        return path
    if os.path.basename(path) in (LATEST, BEST) and os.path.isfile(path):
        return os.path.join(os.path.dirname(path), _read_json(path)["name"])
    for directory in (os.path.join(path, CHECKPOINT_SUBDIR), path):
        pointer = os.path.join(directory, LATEST)
        if os.path.isfile(pointer):
            return os.path.join(directory, _read_json(pointer)["name"])
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


class CheckpointManager:
    """Saves and restores the trackable `objects` of a run under `<model_dir>/checkpoints`.

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
        self.directory = os.path.join(model_dir, CHECKPOINT_SUBDIR)
        self.is_chief = is_chief
        self.keep = keep
        self._objects = objects
        if is_chief:
            os.makedirs(self.directory, exist_ok=True)
            self._remove_stale_temporaries()

    def _pointer(self, which):
        path = os.path.join(self.directory, which)
        return _read_json(path) if os.path.isfile(path) else None

    def latest(self):
        """Path of the newest complete checkpoint, or None."""
        pointer = self._pointer(LATEST)
        return os.path.join(self.directory, pointer["name"]) if pointer else None

    def best(self):
        """Path of the checkpoint with the best validation top-1 error, or None."""
        pointer = self._pointer(BEST)
        return os.path.join(self.directory, pointer["name"]) if pointer else None

    def save(self, name, state, is_best=False):
        """Writes checkpoint `name` atomically and points `latest` (and maybe `best`) at it.

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
        final = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, _TMP_PREFIX + name)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        tf.train.Checkpoint(**self._objects).write(os.path.join(tmp, PREFIX))
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1, sort_keys=True)
        _fsync_tree(tmp)
        if os.path.isdir(final):
            # Same name means same training position (e.g. a save right after resuming from
            # it); the existing complete copy stays, as `latest` may name it.
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
            _fsync(self.directory)
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

    def _remove_stale_temporaries(self):
        # Left behind by a crash during `save`; never referenced by a pointer.
        for name in os.listdir(self.directory):
            if name.startswith(_TMP_PREFIX):
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
            elif _TMP_PREFIX in name:
                os.remove(os.path.join(self.directory, name))
