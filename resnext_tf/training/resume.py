"""Where a run starts: the checkpoint it continues, the model_dir it may write, and, in a
multi-worker run, the proof that every worker starts from the same point."""

import dataclasses
import hashlib
import os

import numpy as np
import tensorflow as tf

from resnext_tf import checkpoints
from resnext_tf.errors import CheckpointError
from resnext_tf.training import cluster, metrics
from resnext_tf.training.run_log import say

# Longest model_dir (UTF-8 bytes) carried by the start all-gather; longer ones are cut.
_MAX_DIR_BYTES = 240
_DIGEST_BYTES = 32
# One row of the start all-gather: job, index, has checkpoint, epoch, step, global step, epoch
# complete, digest bytes, model_dir length, model_dir bytes.
_HEADER = 7
_ROW = _HEADER + _DIGEST_BYTES + 1 + _MAX_DIR_BYTES


@dataclasses.dataclass
class Position:
    """Where training stands: the next batch to take and the running sums of its epoch."""

    epoch: int
    step: int  # batches of `epoch` already consumed
    train_sums: np.ndarray
    best_top1: float | None = None


def zeros():
    """The running sums of an epoch that has not started."""
    return np.zeros([metrics.NUM_STATS])


def resume_source(config, manager):
    """The checkpoint a run continues from, or None for a fresh start."""
    resume = config.resume
    if resume == "none":
        return None
    if resume == "auto":
        return manager.newest_valid()
    found = checkpoints.find_checkpoint(resume)
    if found is None:
        raise ValueError(
            f"No checkpoint to resume from; received resume={resume!r}; expected a model_dir, "
            "its checkpoints/ folder or a checkpoint directory."
        )
    return found


def prepare_model_dir(config, manager, source, is_chief):
    """Clears what interrupted writes left, and refuses (or, with `overwrite`, clears) a
    model_dir whose checkpoints this run would not continue: its saves would otherwise mix
    two runs under one `latest`. Runs under the model_dir lock on the chief."""
    own = os.path.realpath(manager.directory)
    if is_chief:
        manager.remove_temporaries()
    continues_own = source is not None and os.path.dirname(os.path.realpath(source)) == own
    if continues_own:
        if config.overwrite:
            raise CheckpointError(
                f"overwrite would delete the checkpoint {source} that resume="
                f"{config.resume!r} continues from; drop --overwrite to continue it."
            )
        return
    if config.overwrite:
        if is_chief:
            say(f" => Overwrite: removing the checkpoints and logs in {config.model_dir}")
            manager.remove_all()  # with the logs; refuses files of no run
        return
    if manager.holds_checkpoints():
        held = manager.latest() or manager.directory
        raise CheckpointError(
            f"model_dir={config.model_dir!r} holds checkpoints ({held}) that "
            f"resume={config.resume!r} would not continue; pass --overwrite to delete them "
            "(with train_log.csv and the TensorBoard events) first, use another --model_dir, "
            "or --resume=auto to continue them."
        )


def check_ema_in(source, ema_decay):
    """Refuses to continue a checkpoint without a weight EMA when ema_decay asks for one
    (the average cannot be recovered; starting it anew mid-run would not be the same run)."""
    prefix = os.path.join(source, checkpoints.PREFIX)
    names = [name for name, _ in tf.train.list_variables(prefix)]
    if not any(name.startswith("ema/") for name in names):
        raise CheckpointError(
            f"The checkpoint {source} holds no weight EMA, so ema_decay="
            f"{ema_decay!r} cannot continue it; resume without --ema_decay, or "
            "start a fresh run in another --model_dir."
        )


def _checkpoint_digest(checkpoint_dir):
    """sha256 of the file that vouches for a checkpoint (its manifest, else its state)."""
    for name in (checkpoints.MANIFEST_FILE, checkpoints.STATE_FILE):
        path = os.path.join(checkpoint_dir, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                return hashlib.sha256(f.read()).digest()
    return bytes(_DIGEST_BYTES)


def start_row(task, model_dir, source, fresh_epoch):
    """This worker's row of the start all-gather (int32, fixed size)."""
    row = np.zeros([_ROW], np.int32)
    row[0], row[1] = cluster.TRAINING_JOBS.index(task.job), task.index
    if source:
        state = checkpoints.read_state(source)
        row[2:7] = [
            1,
            state["epoch"],
            state["step"],
            state.get("global_step", -1),
            int(bool(state.get("epoch_complete"))),
        ]
        row[_HEADER : _HEADER + _DIGEST_BYTES] = list(_checkpoint_digest(source))
    else:
        row[2:7] = [0, fresh_epoch, 0, 0, 0]
    folder = os.path.abspath(model_dir).encode("utf-8")[:_MAX_DIR_BYTES]
    row[_HEADER + _DIGEST_BYTES] = len(folder)
    start = _HEADER + _DIGEST_BYTES + 1
    row[start : start + len(folder)] = list(folder)
    return row


def _describe_row(row):
    job, index = cluster.TRAINING_JOBS[row[0]], int(row[1])
    size = int(row[_HEADER + _DIGEST_BYTES])
    start = _HEADER + _DIGEST_BYTES + 1
    folder = bytes(int(b) for b in row[start : start + size]).decode("utf-8", "replace")
    if row[2]:
        name = checkpoints.epoch_name(int(row[3])) if row[6] else checkpoints.step_name(int(row[5]))
        where = f"epoch {int(row[3])}, step {int(row[4])} ({name})"
    else:
        where = f"epoch {int(row[3])}, step 0 (no checkpoint: a fresh start)"
    return f"{job} {index} (model_dir={folder!r}) at {where}"


def agree_on_start(strategy, model_dir, source, fresh_epoch):
    """Checks that every worker resumes from the same point, before any training step.

    Every worker contributes its model_dir and the epoch, step and digest of the checkpoint it
    would restore (`source`, None for a fresh start from `fresh_epoch`) to one all-gather of a
    fixed size, so that the check itself cannot fail on shapes.

    Raises:
        CheckpointError: when the workers would start from different points.
    """
    current = cluster.active()
    if current is None:
        return
    row = start_row(current.me, model_dir, source, fresh_epoch)
    value = strategy.experimental_distribute_values_from_function(lambda _: tf.constant(row[None]))
    rows = strategy.gather(value, axis=0).numpy()
    workers = {}
    for r in rows:
        workers.setdefault((int(r[0]), int(r[1])), r)
    progress = {tuple(r[2 : _HEADER + _DIGEST_BYTES]) for r in workers.values()}
    if len(progress) > 1:
        described = "; ".join(_describe_row(r) for _, r in sorted(workers.items()))
        raise CheckpointError(
            f"The workers would resume from different points: {described}. model_dir must be "
            "one folder all workers see (a shared file system), given to every worker."
        )
