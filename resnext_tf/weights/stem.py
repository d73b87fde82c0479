"""RGB weights for models with another number of input channels (grayscale, RGB-D, ...).

Only the stem convolution sees the input channels. Its RGB kernel is adapted by timm's
`adapt_input_conv` rule, which keeps the response to a uniform image: summed over R, G, B for
one channel, else repeated cyclically up to C channels and scaled by 3 / C (docs/predict.md).
Other weights than RGB carry no colour to spread, so they are never adapted.
"""

import contextlib
import logging
import zipfile

import h5py
import numpy as np

from resnext_tf.errors import WeightsError

logger = logging.getLogger(__name__)

RGB = 3
# Layer name of the stem convolution in resnext_tf models, and its torchvision/timm tensor.
STEM_LAYER = "stem_conv"
TORCH_STEM_KERNEL = "conv1.weight"
# The stem kernel in a .weights.h5 file: the only top-level GroupedConv2D, named by its class.
H5_STEM_KERNEL = "layers/grouped_conv2d/vars/0"
# The weights file inside a .keras archive.
KERAS_ARCHIVE_WEIGHTS = "model.weights.h5"
# Axis of the input channels: Keras kernels are (kh, kw, in, out), Torch's (out, in, kh, kw).
KERAS_IN_AXIS, TORCH_IN_AXIS = 2, 1


def adapt_input_kernel(kernel, in_channels, axis=KERAS_IN_AXIS):
    """Adapts a stem kernel trained on RGB to `in_channels` input channels (timm's rule).

    Args:
      kernel: The kernel as an array; its input channels on `axis`.
      in_channels: Channels of the model that receives it.
      axis: Axis of the input channels: 2 for Keras layout, 1 for Torch layout.

    Returns:
      The kernel with `in_channels` entries on `axis`, in the kernel's dtype; `kernel` itself
      when the counts already agree.

    Raises:
      WeightsError: for a kernel that is not RGB (and not `in_channels`), or in_channels < 1.
    """
    kernel = np.asarray(kernel)
    source = kernel.shape[axis]
    if source == in_channels:
        return kernel
    if in_channels < 1 or source != RGB:
        raise WeightsError(
            f"Cannot adapt a stem kernel of shape {kernel.shape} with {source} input channels "
            f"to in_channels={in_channels}; only RGB (3-channel) weights are adapted, to 1 "
            "channel or more."
        )
    work = kernel.astype(np.float32)
    if in_channels == 1:
        adapted = work.sum(axis=axis, keepdims=True)
    else:
        adapted = np.take(work, np.arange(in_channels) % RGB, axis=axis) * (RGB / in_channels)
    return adapted.astype(kernel.dtype)


def model_in_channels(model):
    """Input channels of a resnext_tf model's stem convolution."""
    return int(model.get_layer(STEM_LAYER).kernel.shape[KERAS_IN_AXIS])


def _log_adapted(source_channels, in_channels, where):
    how = "summed over R, G, B" if in_channels == 1 else "repeated and scaled by 3 / channels"
    logger.info(
        "Adapted the stem kernel of %s from %d to %d input channels (%s).",
        where,
        source_channels,
        in_channels,
        how,
    )


def adapt_state_dict(model, state_dict, source="the state dict"):
    """Returns `state_dict` with its stem kernel adapted to the model's input channels.

    A copy with `conv1.weight` adapted (and logged) where the channel counts differ.

    Raises:
      WeightsError: when the source's stem cannot be adapted (see `adapt_input_kernel`).
    """
    kernel = state_dict.get(TORCH_STEM_KERNEL)
    if kernel is None or np.ndim(kernel) != 4:
        return state_dict  # the state dict check names what is missing
    in_channels = model_in_channels(model)
    source_channels = kernel.shape[TORCH_IN_AXIS]
    if source_channels == in_channels:
        return state_dict
    adapted = dict(state_dict)
    adapted[TORCH_STEM_KERNEL] = adapt_input_kernel(kernel, in_channels, axis=TORCH_IN_AXIS)
    _log_adapted(source_channels, in_channels, source)
    return adapted


@contextlib.contextmanager
def _open_h5(path):
    if str(path).endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            if KERAS_ARCHIVE_WEIGHTS not in archive.namelist():
                yield None
                return
            # Read in place (Keras stores it uncompressed), not the whole file into memory.
            with archive.open(KERAS_ARCHIVE_WEIGHTS) as member, h5py.File(member, "r") as f:
                yield f
        return
    with h5py.File(path, "r") as f:
        yield f


def keras_file_in_channels(path):
    """Input channels of the stem stored in a Keras .weights.h5 / .keras file, or None.

    None where the file holds no resnext_tf stem or is not HDF5: Keras then says what is wrong.
    """
    try:
        with _open_h5(path) as f:
            kernel = f.get(H5_STEM_KERNEL) if f is not None else None
            if kernel is None or len(kernel.shape) != 4:
                return None
            return int(kernel.shape[KERAS_IN_AXIS])
    except (OSError, zipfile.BadZipFile):
        return None


def with_in_channels(model, in_channels):
    """A new, untrained copy of a functional resnext_tf model with `in_channels` channels."""
    import keras

    if len(model.inputs) != 1:
        raise WeightsError(
            f"Adapting the stem needs a model with one input; received {model.name!r} with "
            f"{len(model.inputs)} inputs."
        )
    # Cloned on a new input, every layer is rebuilt from its config for the new shape.
    inputs = keras.Input(shape=(*model.input_shape[1:-1], in_channels))
    return keras.models.clone_model(model, input_tensors=inputs)


def load_keras_weights(model, path):
    """`model.load_weights(path)`, adapting the stem when the file has other input channels.

    An RGB file is loaded into a 3-channel copy of `model`, whose variables are then copied
    over, the stem kernel through `adapt_input_kernel`.

    Raises:
      WeightsError: when the file's stem cannot be adapted (see `adapt_input_kernel`).
    """
    in_channels = model_in_channels(model)
    source_channels = keras_file_in_channels(path)
    if source_channels is None or source_channels == in_channels:
        model.load_weights(path)
        return
    if source_channels != RGB:
        # The same check as adapt_input_kernel, before building the copy.
        raise WeightsError(
            f"Cannot adapt the stem of {path} ({source_channels} input channels) to the "
            f"model's {in_channels}; only RGB (3-channel) weights are adapted."
        )
    source = with_in_channels(model, source_channels)
    source.load_weights(path)
    stem_kernel = model.get_layer(STEM_LAYER).kernel.path
    for target, value in zip(model.weights, source.weights, strict=True):
        value = value.numpy()
        if target.path == stem_kernel:
            value = adapt_input_kernel(value, in_channels)
        target.assign(value)
    _log_adapted(source_channels, in_channels, path)
