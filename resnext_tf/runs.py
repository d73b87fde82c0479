"""Reading a training run: its model, its data contract, and weights from a run or any file.

Each checkpoint's state.json records the architecture ("model") and the data contract
("contract"), so export and predict need no trainer configuration; older checkpoints are read
from the configuration they recorded.
"""

import os

import h5py

from resnext_tf import checkpoints, weights
from resnext_tf.contract import DataContract, attach, dataset_classes, folder_classes
from resnext_tf.errors import CheckpointError, UserError, WeightsError
from resnext_tf.recipes import recipe
from resnext_tf.registry import ARCHITECTURE_ARGS, model_kwargs
from resnext_tf.resnext import build_resnext
from resnext_tf.weights.pretrained import KNOWN_NAMES

HEAD = "head"  # layer name of the classifier in resnext_tf models
H5_HEAD_BIAS = "layers/dense/vars/1"  # the classifier bias inside a Keras .weights.h5 file
# The build_resnext arguments a checkpoint records ("model"); the others (conv_impl, sync_bn)
# are how a process runs the model, not what it is.
ARCHITECTURE = (
    "depth",
    "cardinality",
    "base_width",
    "stem",
    "num_classes",
    "bottleneck_type",
    "shortcut_type",
    "input_shape",
)


def own_checkpoint(path):
    """The checkpoint of ours that `path` names (see `checkpoints.find_checkpoint`), or None.

    A published weight name is never a path here (write ./imagenet for such a folder).
    """
    if path in KNOWN_NAMES or not os.path.exists(path):
        return None
    return checkpoints.find_checkpoint(path)


def architecture(state):
    """The build_resnext arguments of the model a checkpoint's state record describes."""
    if isinstance(state.get("model"), dict):
        arch = {k: v for k, v in state["model"].items() if k in ARCHITECTURE}
        arch["input_shape"] = tuple(arch["input_shape"])
        return arch
    config = state.get("config", {})
    stem = recipe(config["dataset"]).stem
    size = config.get("image_size") or recipe(config["dataset"]).image_size
    keys = ("depth", "cardinality", "base_width", "bottleneck_type", "shortcut_type")
    arch = {k: config[k] for k in keys if k in config}
    arch.update(stem=stem, num_classes=state["num_classes"], input_shape=(size, size, 3))
    return arch


def data_contract(state):
    """The DataContract a checkpoint's state record holds or implies."""
    if "contract" in state:
        return DataContract.from_json(state["contract"])
    config = state.get("config", {})
    dataset, data_dir = config["dataset"], config.get("data_dir")
    labels, wnids = dataset_classes(dataset, state["num_classes"])
    if recipe(dataset).stem == "imagenet" and data_dir and os.path.isdir(data_dir):
        from resnext_tf.data import imagenet  # a folder dataset: its sorted class folders

        if imagenet.is_folder_layout(data_dir):
            labels, wnids = folder_classes(imagenet.class_names(data_dir))
    contract = DataContract(dataset, config.get("image_size"), labels=labels, wnids=wnids)
    if contract.labels and len(contract.labels) != state["num_classes"]:
        contract = DataContract(dataset, contract.image_size)
    return contract


def model_from_run(path, conv_impl="auto", variant=None):
    """(model, checkpoint directory) of the newest verified checkpoint of a run; the model
    carries the run's data contract.

    Args:
      path: A model_dir, its checkpoints/ folder, a checkpoint directory or a pointer.
      conv_impl: How the model runs its grouped convolutions.
      variant: A registry name the run's architecture must be (a command's --model).

    Raises:
      CheckpointError: when `path` holds no usable checkpoint, or its records are damaged.
      UserError: when the run's architecture is not `variant`'s.
    """
    found = own_checkpoint(path)
    if found is None:
        raise CheckpointError(
            f"No checkpoint in {path!r}; expected a training run folder, its checkpoints/ "
            "folder or a checkpoint directory."
        )
    state = checkpoints.read_state(found)
    try:
        arch = architecture(state)
        if variant is not None:
            _check_variant(variant, arch, path)
        model = build_resnext(**arch, conv_impl=conv_impl)
        contract = data_contract(state)
        contract.check_classes(model.output_shape[-1])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"The records of {found} are not usable: {e}") from e
    try:
        checkpoints.restore_model_weights(model, found)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    return attach(model, contract), found


def load_run_or_weights(model, path):
    """Loads weights (only) into `model` of the same architecture from a run or any file.

    Args:
        model: the target keras model.
        path: one of our checkpoints (`own_checkpoint`), a .keras file, or anything
            `resnext_tf.weights.load_weights` reads.

    Raises:
        ValueError: when the weights cannot be read or do not fit the model.
        CheckpointError: when `path` holds our checkpoints but none of them verifies.
    """
    found = own_checkpoint(path)
    if found:
        checkpoints.restore_model_weights(model, found)
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

    Our checkpoints record it; a .weights.h5 file stores the only Dense layer as layers/dense.
    """
    found = own_checkpoint(path)
    if found:
        return checkpoints.read_state(found)["num_classes"]
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


def _check_variant(name, arch, path):
    wanted = model_kwargs(name)
    ours = {key: arch[key] for key in ARCHITECTURE_ARGS}
    if any(wanted[key] != value for key, value in ours.items()):
        raise UserError(
            f"--model={name} differs from the run in {path} ({ours}); leave out --model to use "
            "the run's architecture."
        )
