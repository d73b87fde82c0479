"""Entry point of the library: run a TrainConfig (train, or evaluate with test_only)."""

from resnext_tf.errors import EXIT_WORKER_LOST  # noqa: F401 (an exit code of `run` too)
from resnext_tf.training import cluster
from resnext_tf.training.run_log import say
from resnext_tf.training.trainer import NonFiniteLossError, Trainer

# Exit codes of `run` (and of run_cifar.py / run_imagenet.py).
EXIT_OK = 0  # finished, or stopped by SIGTERM after saving a checkpoint (rerun to continue)
EXIT_NON_FINITE_LOSS = 3  # loss became NaN/inf; the last good checkpoint is kept
# EXIT_WORKER_LOST (75): run raises WorkerLostError, which the entry points turn into this code.


@cluster.ends_together  # multi-worker: a lost worker stops the others; all end together
def run(config):
    """Trains (or, with `config.test_only`, evaluates) as configured.

    Args:
        config: a TrainConfig.

    Returns:
        A process exit code: EXIT_OK or EXIT_NON_FINITE_LOSS.

    Raises:
        WorkerLostError: in a multi-worker run, when another worker is lost or never joins
            (the entry points exit with EXIT_WORKER_LOST).
    """
    if config.export_dir:
        # Only runs that export load the exporter, and before training rather than after it.
        # resnext_tf.export reads runs through training.modeling: the export depends on the
        # training package, never the other way round at import time.
        from resnext_tf.export import export_saved_model
    trainer = Trainer(config)
    if config.test_only:
        trainer.test()
    else:
        try:
            outcome = trainer.train()
        except NonFiniteLossError as e:
            say(f" * Stopped: {e}")
            return EXIT_NON_FINITE_LOSS
        if outcome == "preempted":
            say(" * Preempted: checkpoint saved; rerun the same command to continue.")
            return EXIT_OK
    if config.export_dir and trainer.is_chief:
        path = export_saved_model(
            trainer.export_model, config.export_dir, data_config=trainer.data_config
        )
        say(f" => Exported SavedModel to {path}")
    return EXIT_OK
