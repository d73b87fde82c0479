"""Run a TrainConfig: train, or evaluate with test_only. run_cifar.py and run_imagenet.py add
the export (`resnext_tf.job`)."""

from resnext_tf.training.run_log import say
from resnext_tf.training.trainer import NonFiniteLossError, Trainer

# Exit codes of `run` (and of run_cifar.py / run_imagenet.py).
EXIT_OK = 0  # finished, or stopped by SIGTERM after saving a checkpoint (rerun to continue)
EXIT_NON_FINITE_LOSS = 3  # loss became NaN/inf; the last good checkpoint is kept


def run(config, trainer=None):
    """Trains (or, with `config.test_only`, evaluates) as configured. `config.export_dir` is
    the caller's to apply (`resnext_tf.job.run` exports).

    Args:
        config: a TrainConfig.
        trainer: the Trainer of `config`, when the caller built it already.

    Returns:
        (exit code, outcome): EXIT_OK or EXIT_NON_FINITE_LOSS, and "finished", "preempted",
        "tested" or "stopped".
    """
    trainer = trainer or Trainer(config)
    if config.test_only:
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
