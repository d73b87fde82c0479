"""What run_cifar.py and run_imagenet.py run: training (or evaluation), then the export.

The one place that composes `resnext_tf.training` and `resnext_tf.export`, neither of which
imports the other.
"""

from resnext_tf import export
from resnext_tf.training import Trainer, cluster
from resnext_tf.training.main import run_trainer
from resnext_tf.training.run_log import say


# The workers of a multi-worker run meet at the end of all of it, the export included, so that
# none exits while the chief still exports.
@cluster.ends_together
def run(config):
    """Trains or evaluates as `config` says and, with `config.export_dir`, exports the result
    as a SavedModel. An export that would fail stops the run before its first step.

    Returns:
        The process exit code (resnext_tf.training.EXIT_OK or EXIT_NON_FINITE_LOSS).

    Raises:
        WorkerLostError: in a multi-worker run, when another worker is lost or never joins.
    """
    trainer = Trainer(config)
    exports = bool(config.export_dir) and trainer.is_chief
    if exports:
        export.check_export(trainer.export_model, config.export_dir)
    code, outcome = run_trainer(trainer)
    if exports and outcome in ("finished", "tested"):
        path = export.export_saved_model(trainer.export_model, config.export_dir)
        say(f" => Exported SavedModel of the {trainer.result_weights} weights to {path}")
    return code
