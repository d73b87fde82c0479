"""Model construction for a run: architecture from the config, optional pretrained weights
(`--retrain`) and a fresh classifier (`--reset_classifier`)."""

from resnext_tf import runs, weights
from resnext_tf.resnext import build_resnext


def architecture(config, input_shape, num_classes):
    """The build_resnext arguments of the run's model (checkpoints record them, see
    `resnext_tf.runs.ARCHITECTURE`)."""
    return dict(
        depth=config.depth,
        cardinality=config.cardinality,
        base_width=config.base_width,
        stem=config.recipe.stem,
        num_classes=num_classes,
        bottleneck_type=config.bottleneck_type,
        shortcut_type=config.shortcut_type,
        input_shape=tuple(input_shape),
    )


def build_model(config, input_shape, num_classes):
    """The ResNeXt of `config` (a TrainConfig) producing logits for `num_classes`."""
    return build_resnext(
        **architecture(config, input_shape, num_classes),
        conv_impl=config.conv_impl,
        sync_bn=config.sync_bn,
        zero_init_residual=config.zero_init_residual,
    )


def initialise_from(model, path, reset_classifier, build_source):
    """Initialises `model` from pretrained weights, as the original's -retrain.

    Args:
        model: the model to train (its head already has the new size when resetting).
        path: weights to load, see `resnext_tf.runs.load_run_or_weights`.
        reset_classifier: keep the freshly initialised head of `model` (-resetClassifier);
            every other layer is copied from the pretrained model.
        build_source: callable(num_classes) -> model of the same architecture, used to hold the
            pretrained weights with their original head.
    """
    if not reset_classifier:
        runs.load_run_or_weights(model, path)
        return
    if not (runs.own_checkpoint(path) or path.endswith((".weights.h5", ".keras"))):
        # Torch files and published names: the converter skips the classifier itself.
        weights.load_weights(model, path, skip_classifier=True)
        return
    if path.endswith(".keras"):
        source = weights.load_keras_model(path)
    else:
        source = build_source(runs.source_num_classes(path, default=model.output_shape[-1]))
        runs.load_run_or_weights(source, path)
    runs.copy_layer_weights(source, model, skip=(runs.HEAD,))
