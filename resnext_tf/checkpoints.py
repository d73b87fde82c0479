"""The on-disk format of a run's checkpoints, and reading them: find, verify, restore.

Under `<model_dir>/checkpoints/`: `epoch-0003/` and the newest mid-epoch `step-000001234/`
(ckpt.*, state.json, manifest.json), and the JSON pointers `latest` and `best` (the layout is in
docs/training.md, "model_dir"). The manifest holds every other file's size and sha256 (a file
it does not list fails it), so a damaged checkpoint is skipped, with a warning, for the newest
that verifies. Writing is
`resnext_tf.training.checkpoint`'s.
"""

import os
import warnings

import tensorflow as tf

from resnext_tf.errors import CheckpointError
from resnext_tf.fileio import read_json, sha256_of

CHECKPOINT_SUBDIR = "checkpoints"
PREFIX = "ckpt"  # tf.train.Checkpoint file prefix inside each checkpoint directory
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
LATEST = "latest"
BEST = "best"
EPOCH_PREFIX = "epoch-"
STEP_PREFIX = "step-"


def epoch_name(epoch):
    """Directory name of the end-of-epoch checkpoint of `epoch`."""
    return f"{EPOCH_PREFIX}{epoch:04d}"


def step_name(global_step):
    """Directory name of a mid-epoch checkpoint taken after `global_step` steps."""
    return f"{STEP_PREFIX}{global_step:09d}"


def is_checkpoint_name(name):
    return name.startswith((EPOCH_PREFIX, STEP_PREFIX))


def _verify_manifest(checkpoint_dir):
    try:
        files = read_json(os.path.join(checkpoint_dir, MANIFEST_FILE))["files"]
        entries = [(name, int(e["size"]), str(e["sha256"])) for name, e in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST_FILE} is unreadable"
    names = [name for name, _, _ in entries]
    # Only plain names of this directory: a foreign manifest must not point at other files.
    if any(os.path.basename(n) != n or n in ("", ".", "..") for n in names) or not (
        STATE_FILE in names and f"{PREFIX}.index" in names
    ):
        return f"{MANIFEST_FILE} is malformed"
    # Every file must be vouched for: TensorFlow would read an unlisted data file as it is.
    unlisted = sorted(set(os.listdir(checkpoint_dir)) - set(names) - {MANIFEST_FILE})
    if unlisted:
        return f"{unlisted[0]} is not in {MANIFEST_FILE}"
    for name, size, sha256 in entries:
        path = os.path.join(checkpoint_dir, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        actual = os.path.getsize(path)
        if actual != size:
            return f"{name} has {actual} bytes, expected {size}"
        if sha256_of(path) != sha256:
            return f"{name} does not match its sha256"
    return None


def _verify_by_reading(checkpoint_dir):
    # Checkpoints from before manifests: reading every tensor checks TensorFlow's own checksums.
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


# Signatures of checkpoints found intact: a process often resolves one twice, hashing it once.
_VERIFIED = set()


def verify(checkpoint_dir):
    """Returns None when `checkpoint_dir` holds a complete, unaltered checkpoint, else a short
    description of the damage.
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
        state = read_json(os.path.join(checkpoint_dir, STATE_FILE))
    except (OSError, ValueError) as e:
        return f"{STATE_FILE} is unreadable ({type(e).__name__})"
    if not isinstance(state, dict):
        return f"{STATE_FILE} is not a record"
    if os.path.exists(os.path.join(checkpoint_dir, MANIFEST_FILE)):
        return _verify_manifest(checkpoint_dir)
    return _verify_by_reading(checkpoint_dir)


def pointer_target(directory, which):
    """(name, problem) of the pointer file `which`: name None when it is missing or damaged."""
    path = os.path.join(directory, which)
    if not os.path.lexists(path):
        return None, "is missing"
    try:
        name = read_json(path)["name"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"is unreadable ({type(e).__name__})"
    if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
        return None, f"names {name!r}, not a checkpoint of this folder"
    return name, None


def _recency(directory, name):
    state = read_json(os.path.join(directory, name, STATE_FILE))
    return int(state.get("global_step", -1)), bool(state.get("epoch_complete")), name


def holds_checkpoints(directory):
    """Whether the checkpoints/ folder `directory` holds any checkpoint or pointer at all."""
    if not os.path.isdir(directory):
        return False
    return any(is_checkpoint_name(n) or n in (LATEST, BEST) for n in os.listdir(directory))


def newest_valid(directory):
    """The checkpoint of the checkpoints/ folder `directory` to continue from.

    `latest` when it verifies, else (with a warning) the newest by global step that verifies.

    Returns:
        A checkpoint directory, or None when `directory` holds no checkpoint at all.

    Raises:
        CheckpointError: when there are checkpoints but none verifies.
    """
    if not holds_checkpoints(directory):
        return None
    damaged = []
    name, problem = pointer_target(directory, LATEST)
    if name is not None:
        problem = verify(os.path.join(directory, name))
        if problem is None:
            return os.path.join(directory, name)
        damaged.append(f"{name} ({LATEST}; {problem})")
    else:
        damaged.append(f"{LATEST} ({problem})")
    ranked = []
    for candidate in sorted(os.listdir(directory)):
        if not is_checkpoint_name(candidate) or candidate == name:
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

    A checkpoint directory or the `best` pointer must verify as named; a model_dir, its
    checkpoints/ folder or the `latest` pointer gives `newest_valid` of the folder.

    Returns:
        The checkpoint directory (holding state.json), or None when `path` holds none.

    Raises:
        CheckpointError: when the checkpoint named is damaged, or none of the folder verifies.
    """
    if any(os.path.isfile(os.path.join(path, name)) for name in (STATE_FILE, MANIFEST_FILE)):
        return _verified(path, "named directly")
    base, parent = os.path.basename(path), os.path.dirname(path)
    if base == BEST and os.path.isfile(path):
        name, problem = pointer_target(parent, BEST)
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
    return read_json(os.path.join(checkpoint_dir, STATE_FILE))


def read_objects(objects, checkpoint_dir, partial):
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
    read_objects({"model": model}, checkpoint_dir, partial=True)
