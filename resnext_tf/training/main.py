"""Run a TrainConfig: train, or evaluate with test_only. run_cifar.py and run_imagenet.py add
the export (`resnext_tf.job`)."""

from resnext_tf.errors import EXIT_WORKER_LOST  # noqa: F401 (an exit code of `run` too)
from resnext_tf.training import cluster
from resnext_tf.training.run_log import NonFiniteLossError, say
from resnext_tf.training.trainer import Trainer

# Exit codes of `run` (and of run_cifar.py / run_imagenet.py).
EXIT_OK = 0  # finished, or stopped by SIGTERM after saving a checkpoint (rerun to continue)
EXIT_NON_FINITE_LOSS = 3  # loss became NaN/inf; the last good checkpoint is kept
# EXIT_WORKER_LOST (75): run raises WorkerLostError, which the entry points turn into this code.


def run_trainer(trainer):
    """Trains (or, with test_only, evaluates) with a built Trainer.

    Returns:
        (exit code, outcome): EXIT_OK or EXIT_NON_FINITE_LOSS, and "finished", "preempted",
        "tested" or "stopped".
    """
    if trainer.config.test_only:
        trainer.test()
        return EXIT_OK, "tested"
    try:
        outcome = trainer.train()
    except NonFiniteLossError as e:
        say(f" * Stopped: {e}")
        return EXIT_NON_FINITE_LOSS, "stopped"
    if outcome == "preempted":
        say(" * Preempted: checkpoint saved; rerun the same command to continue.")
    return EXIT_OK, outcome


@cluster.ends_together  # multi-worker: a lost worker stops the others; all end together
def run(config):
    """Trains (or, with `config.test_only`, evaluates) as configured; `config.export_dir` is
    the caller's to apply (`resnext_tf.job.run` exports).

    Returns:
        A process exit code: EXIT_OK or EXIT_NON_FINITE_LOSS.

    Raises:
        WorkerLostError: in a multi-worker run, when another worker is lost or never joins
            (the entry points exit with EXIT_WORKER_LOST).
    """
    return run_trainer(Trainer(config))[0]
