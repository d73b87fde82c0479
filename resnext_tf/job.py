"""What run_cifar.py and run_imagenet.py run: training (or evaluation), then the export.

The one place that composes `resnext_tf.training` and `resnext_tf.export`, neither of which
imports the other.
"""

from resnext_tf import export, training
from resnext_tf.training.run_log import say


def run(config):
    """Trains or evaluates as `config` says and, with `config.export_dir`, exports the result
    as a SavedModel. An export that would fail stops the run before its first step.

    Returns:
        The process exit code (resnext_tf.training.EXIT_OK or EXIT_NON_FINITE_LOSS).
    """
    trainer = training.Trainer(config)
    exports = bool(config.export_dir) and trainer.is_chief
    if exports:
        export.check_export(trainer.export_model, config.export_dir)
    code, outcome = training.run(config, trainer)
    if exports and outcome in ("finished", "tested"):
        path = export.export_saved_model(trainer.export_model, config.export_dir)
        say(f" => Exported SavedModel of the {trainer.result_weights} weights to {path}")
    return code
