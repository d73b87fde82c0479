"""The training loop: a custom loop around strategy.run, as fb.resnet.torch's train.lua.

One epoch is one pass over the training split (floor(num_train / batch) batches); after it the
model is evaluated, an end-of-epoch checkpoint is written and a CSV row is logged. Mid-epoch
checkpoints every `checkpoint_steps` steps carry the data position, so that a restarted run
continues with the next batch of the same epoch.
"""

import dataclasses
import functools
import hashlib
import os
import signal
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from resnext_tf import backend_ops, checkpoints, hardware
from resnext_tf.contract import DataContract, attach, dataset_classes, folder_classes
from resnext_tf.data import build_dataset, dataset_spec, evaluation
from resnext_tf.errors import CheckpointError
from resnext_tf.training import checkpoint as ckpt_lib
from resnext_tf.training import distribute, losses, metrics, modeling, schedules
from resnext_tf.training import ema as ema_lib
from resnext_tf.training.lock import ModelDirLock
from resnext_tf.training.optimizer import TorchSGD, no_decay_variables
from resnext_tf.training.run_log import RunLogger, say


def _log_platform(config):
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


@dataclasses.dataclass
class Position:
    """Where training stands: the next batch to take and the running sums of its epoch."""

    epoch: int
    step: int  # batches of `epoch` already consumed
    train_sums: np.ndarray
    best_top1: float | None = None


class Trainer:
    """Builds everything a run needs and runs training or evaluation.

    Args:
        config: a TrainConfig.
        strategy: a tf.distribute.Strategy; built from the config when None.
    """

    def __init__(self, config, strategy=None):
        self.config = config
        if config.deterministic:
            make_deterministic()
        keras.utils.set_random_seed(config.seed)
        keras.mixed_precision.set_global_policy(config.dtype)
        self.strategy = strategy or distribute.build_strategy(
            config.distribution_strategy, config.num_gpus, config.tpu
        )
        distribute.check_batch_size(config.batch_size, self.strategy)
        _log_platform(config)
        self.is_chief = distribute.is_chief(self.strategy)
        self.data_config = config.data_config
        self.spec = dataset_spec(self.data_config)
        self.num_classes = config.num_classes or self.spec.num_classes
        self.steps_per_epoch = self.spec.num_train // config.batch_size
        if config.steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, config.steps_per_epoch)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"The training split has fewer examples than one batch; received "
                f"batch_size={config.batch_size!r} with {self.spec.num_train} examples."
            )
        self.contract = self._contract()
        self._architecture = modeling.architecture(config, self.spec.image_shape, self.num_classes)
        with self.strategy.scope():
            self.model = self._build_model(self.num_classes)
            self.optimizer = _build_optimizer(config, self.model)
            self.optimizer.build(self.model.trainable_variables)
            self.ema = self._build_ema()
        self.schedule = schedules.StepSchedule(
            config.lr,
            config.recipe,
            config.epochs,
            self.steps_per_epoch,
            kind=config.lr_schedule,
            warmup_epochs=config.warmup_epochs,
        )
        self.checkpoints = ckpt_lib.CheckpointManager(
            config.model_dir,
            {"model": self.model, "optimizer": self.optimizer, **self._ema_objects()},
            is_chief=self.is_chief,
            keep=config.keep_checkpoints,
        )
        self.logger = RunLogger(config.model_dir, write_files=self.is_chief)
        self._train_step = tf.function(self._distributed_train_step)
        self._eval_step = tf.function(self._distributed_eval_step)
        if self.ema:
            self._ema_eval_step = tf.function(
                functools.partial(self._distributed_eval_step, model=self.ema.average)
            )
        self._grads = self._replica_grads
        if config.jit_compile:
            # Only forward and backward: the optimizer's cross-replica update cannot be compiled.
            self._grads = tf.function(self._replica_grads, jit_compile=True)
        self._multi_worker = distribute.is_multi_worker(self.strategy)
        self._sigterm_received = False

    # ----------------------------------------------------------------------- model and state

    def _build_model(self, num_classes):
        model = modeling.build_model(self.config, self.spec.image_shape, num_classes)
        return attach(model, self.contract)

    def _contract(self):
        """The run's DataContract: its evaluation and, where known, its class names."""
        cfg = self.data_config
        labels, wnids = dataset_classes(cfg.dataset, self.num_classes)
        if cfg.data_dir and not cfg.is_cifar and os.path.isdir(cfg.data_dir):
            from resnext_tf.data import imagenet  # a folder dataset names its classes

            if imagenet.is_folder_layout(cfg.data_dir):
                labels, wnids = folder_classes(imagenet.class_names(cfg.data_dir))
        if labels is not None and len(labels) != self.num_classes:
            labels, wnids = None, None
        return DataContract(
            cfg.dataset, cfg.crop_size, cfg.eval_resize, cfg.antialias, labels, wnids
        )

    def _build_ema(self):
        """The weight EMA (a second model holding the averages), or None without ema_decay."""
        if not self.config.ema_decay:
            return None
        average = self._build_model(self.num_classes)
        config = self.config
        return ema_lib.WeightEMA(self.model, average, config.ema_decay, warmup=config.ema_warmup)

    def _ema_objects(self):
        # The average is checkpointed with the model, so a resumed run continues it exactly.
        return {"ema": self.ema.average} if self.ema else {}

    @property
    def result_is_ema(self):
        """Whether the weight EMA stands for the run (`best`, the export): with an EMA and
        export_weights='ema', unless --test_only evaluates a --retrain file (it has no EMA)."""
        config = self.config
        from_file = config.test_only and config.retrain
        return bool(self.ema) and config.export_weights == "ema" and not from_file

    @property
    def result_weights(self):
        """'EMA' or 'raw': the weights of `export_model`, as the log names them."""
        return "EMA" if self.result_is_ema else "raw"

    @property
    def export_model(self):
        """The model to export: the weight EMA when it stands for the run, else the trained
        model."""
        return self.ema.average if self.result_is_ema else self.model

    def _say_result_weights(self):
        """One line naming the weights `best` and the export use, for runs with an EMA."""
        if not self.ema:
            return
        config = self.config
        warmup = (
            f"warmup min({config.ema_decay:g}, (1 + step) / (10 + step))"
            if config.ema_warmup
            else "no warmup"
        )
        other = "raw" if self.result_is_ema else "ema"
        say(
            f" => Weight EMA, decay {config.ema_decay:g}, {warmup}: best checkpoint and export "
            f"use the {self.result_weights} weights (--export_weights={other} for the others)"
        )

    def _say_if_ema_worse(self, raw, averaged):
        """One line when the EMA that stands for the run validates worse than the raw weights."""
        if self.result_is_ema and averaged.top1 > raw.top1:
            say(
                f" * The weight EMA validates worse than the raw weights (top1 error "
                f"{averaged.top1:.3f} vs {raw.top1:.3f}): --export_weights=raw exports the raw "
                "weights (with --test_only --export_dir, from this run's checkpoint)"
            )

    def _resume_source(self):
        """The checkpoint a run continues from, or None for a fresh start."""
        resume = self.config.resume
        if resume == "none":
            return None
        if resume == "auto":
            return self.checkpoints.newest_valid()
        found = checkpoints.find_checkpoint(resume)
        if found is None:
            raise ValueError(
                f"No checkpoint to resume from; received resume={resume!r}; expected a model_dir, "
                "its checkpoints/ folder or a checkpoint directory."
            )
        return found

    def _initial_position(self):
        """Restores the latest checkpoint, or initialises a fresh run (with --retrain)."""
        source = self._resume_source()
        self._prepare_model_dir(source)
        if source:
            self._check_ema_in(source)
            state = self.checkpoints.restore(source)
            say(f" => Resuming from {source} (epoch {state['epoch']}, step {state['step']})")
            if state["epoch_complete"]:
                return Position(state["epoch"] + 1, 0, _zeros(), state["best_top1"])
            return Position(
                state["epoch"], state["step"], np.asarray(state["train_sums"]), state["best_top1"]
            )
        if self.config.retrain:
            self._load_pretrained()
            if self.ema:
                self.ema.reset()  # average from the loaded weights, not the random ones
        return Position(self.config.epoch_number, 0, _zeros())

    def _prepare_model_dir(self, source):
        """Clears what interrupted writes left, and refuses (or, with `overwrite`, clears) a
        model_dir whose checkpoints this run would not continue: its saves would otherwise mix
        two runs under one `latest`. Runs under the model_dir lock on the chief."""
        config, own = self.config, os.path.realpath(self.checkpoints.directory)
        if self.is_chief:
            self.checkpoints.remove_temporaries()
        continues_own = source is not None and os.path.dirname(os.path.realpath(source)) == own
        if continues_own:
            if config.overwrite:
                raise CheckpointError(
                    f"overwrite would delete the checkpoint {source} that resume="
                    f"{config.resume!r} continues from; drop --overwrite to continue it."
                )
            return
        if config.overwrite:
            if self.is_chief:
                say(f" => Overwrite: removing the checkpoints and logs in {config.model_dir}")
                self.checkpoints.remove_all()  # with the logs; refuses files of no run
            return
        if self.checkpoints.holds_checkpoints():
            held = self.checkpoints.latest() or self.checkpoints.directory
            raise CheckpointError(
                f"model_dir={config.model_dir!r} holds checkpoints ({held}) that "
                f"resume={config.resume!r} would not continue; pass --overwrite to delete them "
                "(with train_log.csv and the TensorBoard events) first, use another --model_dir, "
                "or --resume=auto to continue them."
            )

    def _check_ema_in(self, source):
        """Refuses to continue a checkpoint without a weight EMA when ema_decay asks for one
        (the average cannot be recovered; starting it anew mid-run would not be the same run)."""
        if not self.ema:
            return
        prefix = os.path.join(source, checkpoints.PREFIX)
        names = [name for name, _ in tf.train.list_variables(prefix)]
        if not any(name.startswith("ema/") for name in names):
            raise CheckpointError(
                f"The checkpoint {source} holds no weight EMA, so ema_decay="
                f"{self.config.ema_decay!r} cannot continue it; resume without --ema_decay, or "
                "start a fresh run in another --model_dir."
            )

    def _load_pretrained(self):
        say(f" => Loading weights from {self.config.retrain}")
        with self.strategy.scope():
            modeling.initialise_from(
                self.model,
                self.config.retrain,
                reset_classifier=self.config.reset_classifier,
                build_source=self._build_model,
            )

    def _state(self, position, epoch_complete, **extra):
        return {
            "epoch": position.epoch,
            "step": position.step,
            "epoch_complete": epoch_complete,
            "global_step": self._global_step(position),
            "train_sums": [float(v) for v in position.train_sums],
            "best_top1": position.best_top1,
            "num_classes": self.num_classes,
            "model": self._architecture,
            "contract": self.contract.to_json(),
            "config": dataclasses.asdict(self.config),
            **extra,
        }

    def _global_step(self, position):
        return (position.epoch - 1) * self.steps_per_epoch + position.step

    # ---------------------------------------------------------------------------- step code

    def _distributed_dataset(self, split, epoch=0, skip_batches=0):
        def dataset_fn(input_context):
            return build_dataset(
                self.data_config,
                split=split,
                global_batch_size=self.config.batch_size,
                input_context=input_context,
                epoch=epoch,
                skip_batches=skip_batches,
            )

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def _replica_grads(self, images, labels):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = tf.cast(self.model(images, training=True), tf.float32)
            per_example = losses.cross_entropy(labels, logits, self.config.label_smoothing)
            # Mean over the global batch: the optimizer sums the replicas' gradients.
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.config.batch_size)
            scaled = self.optimizer.scale_loss(loss)
        return tape.gradient(scaled, variables), metrics.batch_stats(logits, labels)

    def _replica_train_step(self, images, labels):
        grads, stats = self._grads(images, labels)
        self.optimizer.apply(grads, self.model.trainable_variables)
        if self.ema:
            # The step count after this step (1 at the first), read in replica context after
            # the update: checkpointed with the optimizer, so a resumed run warms up alike.
            self.ema.update(self.optimizer.iterations)
        return stats

    def _distributed_train_step(self, batch):
        stats = self.strategy.run(self._replica_train_step, args=batch)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, stats, axis=None)

    def _replica_eval_step(self, images, labels, model):
        return metrics.batch_stats(eval_logits(model, images, self.config.ten_crop), labels)

    def _distributed_eval_step(self, batch, model=None):
        replica_step = functools.partial(self._replica_eval_step, model=model or self.model)
        stats = self.strategy.run(replica_step, args=batch)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, stats, axis=None)

    # ------------------------------------------------------------------------------- public

    def evaluate(self, ema=False):
        """One pass over the evaluation split (of the weight EMA with `ema`); returns
        metrics.Errors."""
        step = self._ema_eval_step if ema else self._eval_step
        total = tf.zeros([metrics.NUM_STATS])
        for batch in self._distributed_dataset("eval"):
            total += step(batch)
        return metrics.Errors.from_sums(total.numpy())

    def test(self):
        """The original's -testOnly: loads weights and prints " * Results top1: X  top5: Y"."""
        if self.config.retrain:
            self._load_pretrained()
        else:
            source = self._resume_source()
            if source is None:
                raise ValueError(
                    f"test_only needs weights: found no checkpoint in "
                    f"model_dir={self.config.model_dir!r} and received retrain=None; pass "
                    "--retrain=FILE or --resume=DIR."
                )
            self._check_ema_in(source)
            self.checkpoints.restore(source)
        evaluates_ema = self.ema and not self.config.retrain
        if evaluates_ema:
            say(
                " => Testing the raw weights (' * Results') and the weight EMA (' * Results "
                f"EMA'); export: the {self.result_weights} weights"
            )
        errors = self.evaluate()
        say(f" * Results top1: {errors.top1:6.3f}  top5: {errors.top5:6.3f}")
        if evaluates_ema:
            averaged = self.evaluate(ema=True)
            say(f" * Results EMA top1: {averaged.top1:6.3f}  top5: {averaged.top5:6.3f}")
            self._say_if_ema_worse(errors, averaged)
        return errors

    def train(self):
        """Trains until `epochs` (or `train_steps`); returns "finished" or "preempted".

        Raises:
            NonFiniteLossError: when the loss becomes NaN or infinite.
        """
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        # The chief alone writes model_dir, so it alone holds the lock; the other workers of a
        # multi-worker run write nothing there.
        lock = ModelDirLock(self.config.model_dir) if self.is_chief else None
        try:
            if lock:
                lock.acquire()
            position = self._initial_position()
            self._say_result_weights()
            outcome = None
            while outcome is None and position.epoch <= self.config.epochs:
                outcome = self._run_epoch(position)
                position = Position(position.epoch + 1, 0, _zeros(), position.best_top1)
        finally:
            if lock:
                lock.release()
            signal.signal(signal.SIGTERM, previous)
        say(f" * Weights sha256: {weights_digest(self.model)}")
        return outcome or "finished"

    # -------------------------------------------------------------------------- epoch loop

    def _on_sigterm(self, signum, frame):
        # Only a flag: the loop acts on it between steps (printing here could re-enter stdout).
        del signum, frame
        self._sigterm_received = True

    def _run_epoch(self, position):
        """Trains the rest of `position.epoch`, evaluates and saves.

        Returns:
            None to go on with the next epoch, or "preempted" / "finished" to stop.
        """
        epoch, config = position.epoch, self.config
        lr = None
        iterator = iter(self._distributed_dataset("train", epoch=epoch, skip_batches=position.step))
        window = _Window(self, position, lr)
        start, first_step = time.perf_counter(), position.step
        while position.step < self.steps_per_epoch:
            step_lr = self.schedule(self._global_step(position))
            if step_lr != lr:
                # Assigned when the schedule moves: once per epoch with the step schedule (as the
                # original), every step during warmup and cosine decay.
                lr = window.lr = step_lr
                self.optimizer.learning_rate = lr
            tick = time.perf_counter()
            batch = next(iterator)
            data_seconds = time.perf_counter() - tick
            window.add(self._train_step(batch), data_seconds)
            position.step += 1
            global_step = self._global_step(position)
            last = position.step == self.steps_per_epoch
            stop = self._stop_reason(global_step)
            save = config.checkpoint_steps and global_step % config.checkpoint_steps == 0
            if last or stop or save or position.step % config.log_steps == 0:
                window.flush()
            # A preempted run saves at once, even after the last step (no time for evaluation;
            # the rerun evaluates); a finished one completes its epoch first.
            if stop == "preempted" or (stop and not last):
                self._save(checkpoints.step_name(global_step), position, epoch_complete=False)
                return stop
            if last:
                break
            if save:
                self._save(checkpoints.step_name(global_step), position, epoch_complete=False)
        seconds = time.perf_counter() - start
        train, val = metrics.Errors.from_sums(position.train_sums), self.evaluate()
        # The weights that stand for the run (the EMA unless --export_weights=raw) pick `best`.
        val_ema = self.evaluate(ema=True) if self.ema else None
        selected = val_ema if self.result_is_ema else val
        is_best = position.best_top1 is None or selected.top1 < position.best_top1
        if is_best:
            position.best_top1 = selected.top1
        images_per_second = (position.step - first_step) * config.batch_size / max(seconds, 1e-9)
        epoch_lr = self.schedule.epoch_lr(epoch)
        ema_log = {"ema": val_ema} if val_ema else {}
        self.logger.epoch(epoch, epoch_lr, train, val, seconds, images_per_second, **ema_log)
        records = {"val": {"loss": val.loss, "top1": val.top1, "top5": val.top5}}
        if val_ema:
            records["val_ema"] = {"loss": val_ema.loss, "top1": val_ema.top1, "top5": val_ema.top5}
        self._save(checkpoints.epoch_name(epoch), position, True, is_best=is_best, **records)
        outcome = "finished" if epoch == config.epochs else None
        outcome = outcome or self._stop_reason(self._global_step(position))
        if outcome == "finished" and val_ema:
            self._say_if_ema_worse(val, val_ema)
        return outcome

    def _stop_reason(self, global_step):
        """ "preempted" after SIGTERM, "finished" at `train_steps`, else None.

        Workers of a multi-worker run act on SIGTERM only once they agree on it, at logging
        steps, so that all of them take part in the same final checkpoint.
        """
        preempted = self._sigterm_received
        if self._multi_worker:
            agree = global_step % self.config.log_steps == 0
            preempted = agree and self._any_worker(self._sigterm_received)
        if preempted:
            say(" => Preempted (SIGTERM): saving a checkpoint")
            return "preempted"
        limit = self.config.train_steps
        return "finished" if limit and global_step >= limit else None

    def _any_worker(self, flag):
        local = self.strategy.run(lambda: tf.constant(float(flag)))
        return float(self.strategy.reduce(tf.distribute.ReduceOp.SUM, local, axis=None)) > 0

    def _save(self, name, position, epoch_complete, is_best=False, **extra):
        state = self._state(position, epoch_complete, **extra)
        path = self.checkpoints.save(name, state, is_best=is_best)
        if path:
            say(f" => Saved checkpoint {path}")


class _Window:
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


def make_deterministic():
    """Deterministic kernels plus one inter-op thread.

    With several inter-op threads, the CPU results of a training step differ in the last bits
    from run to run even with op determinism on (measured with TF 2.21 on the CIFAR models);
    running independent ops one at a time makes them bit-reproducible for about 20% more step
    time. Meant for single-device runs: replicas of one process need concurrent collectives.
    """
    tf.config.experimental.enable_op_determinism()
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        # The runtime already started (e.g. in a notebook); the setting can no longer change.
        if tf.config.threading.get_inter_op_parallelism_threads() != 1:
            warnings.warn(
                "deterministic=True could not limit TensorFlow to one inter-op thread because "
                "the runtime is already initialised; results may differ in the last bits.",
                stacklevel=3,
            )


def eval_logits(model, images, ten_crop):
    """float32 inference logits; with `ten_crop`, images [b, crops, H, W, 3] give the crops'
    logits combined by `resnext_tf.data.evaluation.combine_crops`, predict's rule too."""
    if not ten_crop:
        return tf.cast(model(images, training=False), tf.float32)
    crops = images.shape[1]
    logits = model(tf.reshape(images, [-1, *images.shape[2:]]), training=False)
    return evaluation.combine_crops(tf.reshape(logits, [-1, crops, logits.shape[-1]]))


def _zeros():
    return np.zeros([metrics.NUM_STATS])


def _build_optimizer(config, model=None):
    optimizer = TorchSGD(
        learning_rate=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
    if config.no_weight_decay_on and model is not None:
        optimizer.exclude_from_l2(no_decay_variables(model, config.no_weight_decay_on))
    if config.dtype == "mixed_float16":
        # float16 gradients underflow without dynamic loss scaling; bfloat16 does not need it.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def weights_digest(model):
    """sha256 of every model variable (BatchNorm statistics included), for bit-exact checks."""
    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
    return digest.hexdigest()
