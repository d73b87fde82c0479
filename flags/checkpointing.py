"""Run directory, checkpoint, resume, retrain, export and logging flags."""

from absl import flags


def define_flags(flag_values):
    """Defines model_dir, resume, overwrite, retrain, checkpoint_steps, keep_checkpoints,
    export_dir and log_steps."""
    flags.DEFINE_string(
        "model_dir",
        None,
        "Run directory for checkpoints, train_log.csv and TensorBoard events "
        "(default: runs/<dataset>_resnext<depth>_<C>x<d>d).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "resume",
        "auto",
        "auto: continue from model_dir's latest checkpoint when there is one; none: start "
        "fresh; or a model_dir / checkpoint directory to continue from.",
        flag_values=flag_values,
    )
    flags.DEFINE_boolean(
        "overwrite",
        False,
        "With --resume=none (or --resume=DIR of another run): first delete model_dir's "
        "checkpoints, train_log.csv and TensorBoard events. Without it, such a run into a "
        "model_dir that holds checkpoints is refused. Do not keep it in a command you rerun "
        "to resume.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "retrain",
        None,
        "Initialise a fresh run with these weights (optimizer state not loaded): .weights.h5, "
        ".keras, a checkpoint directory of this project, or a file resnext_tf.weights converts.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "checkpoint_steps",
        0,
        "Also save a checkpoint every this many global steps (0: only at the end of epochs).",
        0,
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "keep_checkpoints",
        5,
        "End-of-epoch checkpoints kept (0: all); latest and best are always kept.",
        0,
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "export_dir",
        None,
        "Export a SavedModel here after training (needs resnext_tf.export).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "log_steps", 10, "Print a batch line every this many steps.", 1, flag_values=flag_values
    )
