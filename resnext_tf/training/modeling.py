"""Model construction for a run: architecture from the config, optional pretrained weights
(`--retrain`) and a fresh classifier (`--reset_classifier`)."""

import os

import h5py

from resnext_tf import weights
from resnext_tf.errors import WeightsError
from resnext_tf.resnext import build_resnext
from resnext_tf.training import checkpoint
from resnext_tf.weights.pretrained import KNOWN_NAMES

HEAD = "head"  # layer name of the classifier in resnext_tf models
H5_HEAD_BIAS = "layers/dense/vars/1"  # the classifier bias inside a Keras .weights.h5 file


def build_model(config, input_shape, num_classes):
    """The ResNeXt of `config` (a TrainConfig) producing logits for `num_classes`."""
    return build_resnext(
        depth=config.depth,
        cardinality=config.cardinality,
        base_width=config.base_width,
        stem=config.recipe.stem,
        num_classes=num_classes,
        bottleneck_type=config.bottleneck_type,
        shortcut_type=config.shortcut_type,
        conv_impl=config.conv_impl,
        sync_bn=config.sync_bn,
        zero_init_residual=config.zero_init_residual,
        input_shape=input_shape,
    )


def _own_checkpoint(path):
    # A model_dir, checkpoints/ folder or `latest` resolves to its newest checkpoint that
    # verifies (a damaged one is skipped with a warning); see checkpoint.find_checkpoint.
    # A published weight name always means the published file, even where a folder of that
    # name exists in the working directory (write ./imagenet for the folder).
    if path in KNOWN_NAMES or not os.path.exists(path):
        return None
    return checkpoint.find_checkpoint(path)


def load_run_or_weights(model, path):
    """Loads weights (only) into `model` from a training run or any weights file; the
    architecture must match.

    Args:
        model: the target keras model.
        path: a .weights.h5 file, a .keras file, one of our checkpoints (a model_dir, its
            checkpoints/ folder, a checkpoint directory or the latest/best pointer), or anything
            `resnext_tf.weights.load_weights` reads (Torch files, published weight names).

    Raises:
        ValueError: when the weights cannot be read or do not fit the model.
        CheckpointError: when `path` holds our checkpoints but none of them verifies (or the
            checkpoint directory named is damaged).
    """
    found = _own_checkpoint(path)
    if found:
        checkpoint.restore_model_weights(model, found)
    elif path.endswith(".keras"):
        copy_layer_weights(weights.load_keras_model(path), model)
    else:
        weights.load_weights(model, path)



def copy_layer_weights(source, target, skip=()):
    """Copies weights layer by layer, matched by name (layer names are deterministic).

    Raises:
        ValueError: when a layer of `target` is missing in `source` or has other shapes.
    """
    for layer in target.layers:
        if layer.name in skip or not layer.weights:
            continue
        try:
            values = source.get_layer(layer.name).get_weights()
        except ValueError as e:
            raise ValueError(f"Layer {layer.name!r} of the target has no counterpart: {e}") from e
        layer.set_weights(values)


def source_num_classes(path, default):
    """Classifier size of the model stored at `path`, or `default` when the file does not say.

    Our checkpoints record it; in a Keras .weights.h5 file the classifier is the model's only
    Dense layer, stored under layers/dense (Keras names the groups by layer class).
    """
    found = _own_checkpoint(path)
    if found:
        return checkpoint.read_state(found)["num_classes"]
    if path.endswith(".weights.h5"):
        try:
            with h5py.File(path, "r") as f:
                bias = f.get(H5_HEAD_BIAS)
                return int(bias.shape[0]) if bias is not None else default
        except OSError as e:
            raise WeightsError(
                f"Cannot read {path} as a Keras .weights.h5 file ({e}); expected an HDF5 file "
                "written by model.save_weights."
            ) from e
    return default


def initialise_from(model, path, reset_classifier, build_source):
    """Initialises `model` from pretrained weights, as the original's -retrain.

    Args:
        model: the model to train (its head already has the new size when resetting).
        path: weights to load, see `load_run_or_weights`.
        reset_classifier: keep the freshly initialised head of `model` (-resetClassifier);
            every other layer is copied from the pretrained model.
        build_source: callable(num_classes) -> model of the same architecture, used to hold the
            pretrained weights with their original head.
    """
    if not reset_classifier:
        load_run_or_weights(model, path)
        return
    if not (_own_checkpoint(path) or path.endswith((".weights.h5", ".keras"))):
        # Torch files and published names: the converter skips the classifier itself.
        weights.load_weights(model, path, skip_classifier=True)
        return
    if path.endswith(".keras"):
        source = weights.load_keras_model(path)
    else:
        source = build_source(source_num_classes(path, default=model.output_shape[-1]))
        load_run_or_weights(source, path)
    copy_layer_weights(source, model, skip=(HEAD,))
