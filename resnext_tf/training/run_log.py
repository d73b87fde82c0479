"""Console lines in the original's format, a CSV with one row per epoch, TensorBoard events.

Files in model_dir (chief only): train_log.csv and tensorboard/{train,val}/events.*.
"""

import csv
import hashlib
import os
import shutil
import stat
import time

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from resnext_tf import backend_ops, fileio, hardware
from resnext_tf.training import metrics

CSV_FILE = "train_log.csv"
TENSORBOARD_DIR = "tensorboard"
EVENTS_PREFIX = "events.out.tfevents."  # the names tf.summary's file writers give
# Marks an event as a TensorBoard scalar. tf.summary.scalar would need the tensorboard package,
# which TensorFlow no longer installs; tf.summary.write with this metadata gives the same events.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR,
)
CSV_FIELDS = (
    "epoch",
    "lr",
    "train_loss",
    "train_top1",
    "train_top5",
    "val_loss",
    "val_top1",
    "val_top5",
    "epoch_seconds",
    "images_per_second",
)
# Columns of the weight EMA's validation (--ema_decay), present only in runs that keep one.
EMA_CSV_FIELDS = ("val_ema_loss", "val_ema_top1", "val_ema_top5")


def say(message):
    """Prints one log line immediately (the logs are read live and by tests)."""
    print(message, flush=True)


def read_csv(path):
    """Rows of a train_log.csv as dicts of floats (epoch as int)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [
        {k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v != ""}
        for row in rows
    ]


def _not_a_folder(path):
    """Why `path`, which exists, is not a folder of its own, or None."""
    mode = fileio.lstat_mode(path)
    if stat.S_ISLNK(mode):
        return "is a symbolic link (--overwrite follows none)"
    return None if stat.S_ISDIR(mode) else "is not a folder"


def _is_file(path):
    return stat.S_ISREG(fileio.lstat_mode(path) or 0)


def _csv_header(path):
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        return f.readline(4096).rstrip("\r\n")


def foreign_log_file(model_dir):
    """(path, why) of the first file among model_dir's train_log.csv and tensorboard/ that a
    run did not write, or None: never a symbolic link; the CSV must start with a run's header,
    tensorboard/ hold only train/ and val/ folders of event files."""
    csv_path = os.path.join(model_dir, CSV_FILE)
    headers = {",".join(CSV_FIELDS), ",".join(CSV_FIELDS + EMA_CSV_FIELDS)}
    if fileio.lstat_mode(csv_path) is not None and not _is_file(csv_path):
        return csv_path, "is not a regular file"
    if fileio.lstat_mode(csv_path) is not None and _csv_header(csv_path) not in headers:
        return csv_path, f"does not start with a run's header ({','.join(CSV_FIELDS[:3])},...)"
    folder = os.path.join(model_dir, TENSORBOARD_DIR)
    if fileio.lstat_mode(folder) is None:
        return None
    if _not_a_folder(folder):
        return folder, _not_a_folder(folder)
    for split in sorted(os.listdir(folder)):
        path = os.path.join(folder, split)
        if split not in ("train", "val"):
            return path, "is not the train/ or val/ folder of a run's events"
        if _not_a_folder(path):
            return path, _not_a_folder(path)
        for name in sorted(os.listdir(path)):
            if not (name.startswith(EVENTS_PREFIX) and _is_file(os.path.join(path, name))):
                return os.path.join(path, name), "is not a TensorBoard event file of a run"
    return None


def remove_logs(model_dir):
    """Deletes the train_log.csv and TensorBoard events of model_dir (for --overwrite, once
    `foreign_log_file` finds nothing else there); never follows a symbolic link."""
    path = os.path.join(model_dir, CSV_FILE)
    if fileio.lstat_mode(path) is not None:
        os.remove(path)
    folder = os.path.join(model_dir, TENSORBOARD_DIR)
    if stat.S_ISDIR(fileio.lstat_mode(folder) or 0):
        shutil.rmtree(folder)


class RunLogger:
    """Writes the logs of a run.

    Nothing is written before the first log line, so a run can take the model_dir lock (and
    clear old logs) after building its logger.

    Args:
        model_dir: run directory.
        write_files: False on non-chief workers (console only).
    """

    def __init__(self, model_dir, write_files=True):
        self.write_files = write_files
        self.model_dir = model_dir
        self.csv_path = os.path.join(model_dir, CSV_FILE)
        self._writers = {}

    def _writer(self, split):
        if split not in self._writers:
            logdir = os.path.join(self.model_dir, TENSORBOARD_DIR, split)
            self._writers[split] = tf.summary.create_file_writer(logdir)
        return self._writers[split]

    def batch(self, epoch, step, steps, batch_time, data_time, errors, lr, global_step):
        """Per-batch line of fb.resnet.torch (averages over the last logging window)."""
        say(
            f" | Epoch: [{epoch}][{step}/{steps}]    Time {batch_time:.3f}  Data {data_time:.3f}"
            f"  Loss {errors.loss:1.4f}  top1 {errors.top1:7.3f}  top5 {errors.top5:7.3f}"
            f"  LR {lr:.6g}"
        )
        self._scalars("train", global_step, {"batch/loss": errors.loss, "batch/top1": errors.top1})

    def epoch(self, epoch, lr, train, val, seconds, images_per_second, ema=None):
        """End-of-epoch lines, CSV row and TensorBoard scalars.

        Args:
            epoch: 1-based epoch.
            lr: learning rate used in the epoch.
            train: metrics.Errors of the training epoch.
            val: metrics.Errors of the evaluation pass.
            seconds: wall time of the training part of the epoch.
            images_per_second: training throughput of the epoch.
            ema: metrics.Errors of the weight EMA's evaluation, or None; logged as "val EMA",
                ema_* scalars of the val split and the val_ema_* columns.
        """
        for split, errors in (("train", train), ("val", val), ("val EMA", ema)):
            if errors is None:
                continue
            say(
                f" * Finished epoch # {epoch}  top1: {errors.top1:7.3f}  top5: {errors.top5:7.3f}"
                f"  ({split}, loss {errors.loss:.4f})"
            )
            values = {"loss": errors.loss, "top1_error": errors.top1, "top5_error": errors.top5}
            if split == "val EMA":
                self._scalars("val", epoch, {f"ema_{k}": v for k, v in values.items()})
                continue
            if split == "train":
                values.update(lr=lr, images_per_second=images_per_second)
            self._scalars(split, epoch, values)
        row = {"epoch": epoch, "lr": lr, "epoch_seconds": seconds}
        row.update(train_loss=train.loss, train_top1=train.top1, train_top5=train.top5)
        row.update(val_loss=val.loss, val_top1=val.top1, val_top5=val.top5)
        row.update(images_per_second=images_per_second)
        if ema is not None:
            row.update(val_ema_loss=ema.loss, val_ema_top1=ema.top1, val_ema_top5=ema.top5)
        self._csv_row(row)

    def _scalars(self, split, step, values):
        if not self.write_files:
            return
        writer = self._writer(split)
        with writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.write(name, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)
        writer.flush()

    def _csv_row(self, row):
        if not self.write_files:
            return
        # Drop rows of this or later epochs: a run resumed from before them must not repeat them.
        rows = read_csv(self.csv_path) if os.path.exists(self.csv_path) else []
        rows = [r for r in rows if r["epoch"] < row["epoch"]] + [row]
        with fileio.atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="") as f:
            with_ema = any(name in r for r in rows for name in EMA_CSV_FIELDS)
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS + EMA_CSV_FIELDS * with_ema)
            writer.writeheader()
            writer.writerows(rows)


def log_platform(config):
    """Says where the run computes: the CPU, oneDNN's state, GPUs, and what conv_impl runs."""
    say(f" => {hardware.describe()}")
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        say(f" => GPUs: {len(gpus)}")
    dtype = keras.mixed_precision.global_policy().compute_dtype
    impl, why = backend_ops.explain_conv_impl(config.conv_impl, dtype)
    say(f" => conv_impl={config.conv_impl}: {impl} ({why})")
    warning = None if gpus else hardware.bf16_emulation_warning(config.dtype)
    if warning:
        say(f" => Warning: {warning}")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops without saving."""


class StepWindow:
    """Per-step results since the last log line, fetched from the device in one go.

    Keeping the step outputs as tensors until a log line (or a checkpoint) is due lets the host
    run ahead of the accelerator; the NaN check still names the exact step.
    """

    def __init__(self, trainer, position, lr):
        self.trainer = trainer
        self.position = position
        self.lr = lr
        self.pending = []
        self.data_time = 0.0
        self.start = time.perf_counter()

    def add(self, stats, data_seconds):
        self.pending.append(stats)
        self.data_time += data_seconds

    def flush(self):
        """Checks the pending steps for a non-finite loss, adds them up and logs one line."""
        if not self.pending:
            return
        rows = tf.stack(self.pending).numpy().astype(np.float64)
        position, trainer = self.position, self.trainer
        global_step = trainer._global_step(position)
        for offset, row in enumerate(rows, start=1 - len(rows)):
            if not np.isfinite(row[metrics.LOSS]):
                raise NonFiniteLossError(
                    f"Loss is {row[metrics.LOSS] / row[metrics.COUNT]} at epoch {position.epoch}, "
                    f"step {position.step + offset} (global step {global_step + offset}); "
                    f"stopping. The last good checkpoint is {trainer.checkpoints.latest()}."
                )
        window_sums = rows.sum(axis=0)
        position.train_sums = position.train_sums + window_sums
        trainer.logger.batch(
            position.epoch,
            position.step,
            trainer.steps_per_epoch,
            batch_time=(time.perf_counter() - self.start) / len(rows),
            data_time=self.data_time / len(rows),
            errors=metrics.Errors.from_sums(window_sums),
            lr=self.lr,
            global_step=global_step,
        )
        self.pending, self.data_time, self.start = [], 0.0, time.perf_counter()


def weights_digest(model):
    """sha256 of every model variable (BatchNorm statistics included), for bit-exact checks."""
    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
    return digest.hexdigest()
