"""Loading any supported weights into a resnext_tf model, with a cache of converted files."""

import collections
import contextlib
import hashlib
import logging
import os
import struct
import zipfile

from resnext_tf import fileio
from resnext_tf.errors import WeightsError, one_line
from resnext_tf.layers import Bottleneck
from resnext_tf.recipes import RECIPES
from resnext_tf.registry import MODEL_SPECS
from resnext_tf.resnext import stage_blocks
from resnext_tf.weights import pretrained, torch7
from resnext_tf.weights.state_dict import (
    BLOCK_NAME,
    assign_state_dict,
    quoted,
    read_state_dict,
    version_tuple,
)
from resnext_tf.weights.stem import adapt_state_dict, load_keras_weights

logger = logging.getLogger(__name__)

# Files Keras loads itself (weights of the same architecture).
KERAS_SUFFIXES = (".weights.h5", ".h5", ".keras")
TORCH7_SUFFIX = ".t7"
WEIGHTS_SUFFIX = ".weights.h5"
KERAS_ARCHIVE_SUFFIX = ".keras"
# Keras before 3.11 has published ways for a crafted .keras file to run code despite safe mode.
MIN_KERAS = (3, 11)
# What reading a damaged or foreign weights file raises (h5py: OSError, KeyError, ValueError;
# Keras: ValueError; zip archives: BadZipFile); reported as a WeightsError naming the file.
READ_ERRORS = (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile, struct.error)


def architecture_name(model):
    """The registry name whose architecture `model`'s blocks have (whatever its name), or None."""
    blocks = [layer for layer in model.layers if isinstance(layer, Bottleneck)]
    names = [BLOCK_NAME.fullmatch(block.name) for block in blocks]
    if not blocks or not all(names):
        return None
    per_stage = collections.Counter(int(match[1]) for match in names)
    counts = tuple(per_stage[s] for s in sorted(per_stage))
    width = (blocks[0].cardinality, blocks[0].base_width)
    for name, (dataset, depth, cardinality, base_width, _) in MODEL_SPECS.items():
        same_blocks = stage_blocks(RECIPES[dataset].stem, depth) == counts
        if same_blocks and (cardinality, base_width) == width:
            return name
    return None


@contextlib.contextmanager
def naming_errors(path):
    """Reports what goes wrong with the weights in `path` as a one-line WeightsError naming it."""
    try:
        yield
    except WeightsError as e:
        if str(path) in str(e):
            raise
        raise WeightsError(f"{path}: {one_line(e)}") from e
    except READ_ERRORS as e:
        raise WeightsError(f"Cannot load weights from {path}: {quoted(e)}") from e


def check_keras_version(path):
    """Refuses a .keras file under a Keras older than MIN_KERAS."""
    import keras

    if version_tuple(keras.__version__) < MIN_KERAS:
        minimum = ".".join(map(str, MIN_KERAS))
        raise WeightsError(
            f"Refusing to load {path} with Keras {keras.__version__}: Keras before {minimum} has "
            "published ways for a crafted .keras file to run code despite safe mode. Upgrade "
            f"(pip install -U 'keras>={minimum}')."
        )


def load_keras_model(path):
    """Loads a whole .keras model with `safe_mode=True` (and compile=False).

    Safe mode refuses lambdas and classes outside Keras, so the file's config cannot run code.

    Raises:
      WeightsError: naming the file, for Keras before MIN_KERAS, content safe mode refuses, or
        a file Keras cannot read.
    """
    import keras

    check_keras_version(path)
    with naming_errors(path):
        return keras.saving.load_model(path, compile=False, safe_mode=True)


def read_source(path):
    """Reads a Torch7 (.t7), safetensors or torch file into a torchvision-style state dict.

    Raises:
      WeightsError: naming the file, when it cannot be read as its suffix says.
    """
    with naming_errors(path):
        if str(path).endswith(TORCH7_SUFFIX):
            return torch7.read_t7(path)
        return read_state_dict(path)


def save_weights_atomic(model, path):
    """Writes `model.save_weights` so that `path` is never partial, even after a crash."""
    if not path.endswith(WEIGHTS_SUFFIX):
        raise ValueError(f"Keras weight files end in {WEIGHTS_SUFFIX}; received path={path!r}.")
    # Keras names the format by the suffix, which the temporary name keeps.
    with fileio.atomic_path(path) as tmp:
        model.save_weights(tmp)


def convert_weights(src, model, out, skip_classifier=False):
    """Converts a Torch weight file for `model` and writes it as a Keras .weights.h5 file.

    Args:
      src: A .pth/.pt/.bin (needs torch), .safetensors or .t7 file.
      model: The resnext_tf model the weights are for; its variables are set.
      out: Output path ending in .weights.h5.
      skip_classifier: Keep the model's classifier (see `assign_state_dict`).

    Raises:
      WeightsError: naming `src`, when it cannot be read or does not fit the model.
    """
    state = read_source(src)
    with naming_errors(src):
        assign_state_dict(model, adapt_state_dict(model, state, src), skip_classifier)
    save_weights_atomic(model, out)


def _model_signature(model):
    layout = "\n".join(f"{v.path}:{tuple(v.shape)}" for v in model.weights)
    return hashlib.sha256(layout.encode()).hexdigest()[:12]


def converted_path(src, model, skip_classifier):
    """Cache path of `src` converted for `model`'s variables (content and layout hashed)."""
    stem = os.path.basename(src).split(".")[0]
    head = "-nohead" if skip_classifier else ""
    name = f"{stem}-{fileio.sha256_of(src)[:12]}-{_model_signature(model)}{head}"
    return os.path.join(pretrained.cache_dir(pretrained.CONVERTED), name + WEIGHTS_SUFFIX)


def load_weights(model, weights, *, skip_classifier=False):
    """Loads weights of any supported kind into a resnext_tf model.

    Torch files are converted on first use and cached as .weights.h5 (`converted_path`).

    Args:
      model: A resnext_tf model.
      weights: A published name (`list_pretrained`) or a file: .weights.h5 / .keras (weights
        only, read by Keras), .pth / .pt / .bin (torchvision or timm; needs torch),
        .safetensors or .t7 (see `pretrained.resolve_weights`).
      skip_classifier: Keep the model's classifier (fine-tuning with another number of
        classes, the original's -resetClassifier). Torch files only.

    Raises:
      WeightsError: naming the file or name, for unknown names, unreadable files, or weights
        that do not fit the model (naming the tensors).
      pretrained.WeightsUnavailable: when a known file is not available offline.
    """
    path = pretrained.resolve_weights(weights, architecture_name(model))
    if path is None:
        return
    if path.endswith(KERAS_SUFFIXES):
        if skip_classifier:
            raise WeightsError(
                f"skip_classifier applies to Torch files; received {path!r}, which Keras "
                "loads as a whole."
            )
        if path.endswith(KERAS_ARCHIVE_SUFFIX):
            check_keras_version(path)
        with naming_errors(path):
            # Of a .keras archive only the weights are read, never the config (no code).
            load_keras_weights(model, path)
        return
    cached = converted_path(path, model, skip_classifier)
    if os.path.exists(cached) and _load_cached(model, cached, skip_classifier):
        return
    state = read_source(path)
    with naming_errors(path):
        assign_state_dict(model, adapt_state_dict(model, state, path), skip_classifier)
    try:
        save_weights_atomic(model, cached)
    except OSError as e:  # a read-only cache costs a conversion next time, nothing more
        logger.warning("Could not cache the converted weights at %s: %s", cached, e)


def _load_cached(model, path, skip_classifier):
    """Loads a cached conversion; False (the entry removed) when it cannot be read.

    A damaged entry (a full disk, a copy cut short) is converted again, not failed on forever.
    """
    has_head = any(layer.name == "head" for layer in model.layers)
    head = model.get_layer("head").weights if skip_classifier and has_head else []
    kept = [v.numpy() for v in head]
    try:
        model.load_weights(path)
    except READ_ERRORS as e:
        logger.warning(
            "Removing the unreadable cached conversion %s (%s); converting again.", path, quoted(e)
        )
        with contextlib.suppress(OSError):  # gone already, or not a file we can remove
            os.remove(path)
        return False
    finally:
        for variable, value in zip(head, kept, strict=True):
            variable.assign(value)
    return True
