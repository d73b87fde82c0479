"""Torch state dicts (torchvision / timm ResNet and ResNeXt) into resnext_tf Keras models.

The mapping follows the structure of both networks: the stem, then block `b` of stage `s`
(`stage{s}_block{b}`) is torchvision's `layer{s}.{b-1}`, then the classifier. Every tensor the
model needs must be in the state dict with the right shape, every tensor of the state dict must
be used, and every model variable must receive a value; anything else raises an error that names
the tensors involved. BatchNorm running statistics are part of the mapping.
"""

import logging
import os
import re
import struct

import numpy as np

from resnext_tf.errors import WeightsError, one_line
from resnext_tf.layers import Bottleneck

logger = logging.getLogger(__name__)

# Torch convolution weights are (out, in / groups, kh, kw); resnext_tf kernels are
# (kh, kw, in / groups, out), the layout of Keras Conv2D(groups).
CONV_TO_KERAS = (2, 3, 1, 0)
# Keras BatchNormalization variable -> torch.nn.BatchNorm2d tensor name.
BN_TENSORS = (
    ("gamma", "weight"),
    ("beta", "bias"),
    ("moving_mean", "running_mean"),
    ("moving_variance", "running_var"),
)
# BatchNorm2d's update counter: bookkeeping of training, with no effect on the outputs.
BN_COUNTER = "num_batches_tracked"
# Module names inside a torchvision/timm ResNet.
STEM_CONV, STEM_BN, CLASSIFIER = "conv1", "bn1", "fc"
BLOCK_LAYERS = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")
PROJECTION = (("shortcut_conv", "downsample.0"), ("shortcut_bn", "downsample.1"))
BLOCK_NAME = re.compile(r"stage(\d+)_block(\d+)")
# How many names an error lists before it summarises the rest.
MAX_LISTED = 12
# torch.load(weights_only=True) is the only way torch files are read; earlier torch versions
# have published ways for a crafted file to run code through it anyway.
MIN_TORCH = (2, 10)
# How much of a reader's own error message a WeightsError quotes.
MAX_QUOTED = 300
# Records of the zip archive torch.save writes: the end of the central directory (its zip64
# locator and record for large archives) and a central directory entry.
_ZIP_END = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")
_ZIP_ENTRY = struct.Struct("<4s6H3L5H2L")
ZIP_STORED = 0


def version_tuple(version):
    """(major, minor) of a version string such as "2.10.0+cpu"; (0, 0) when unreadable."""
    match = re.match(r"(\d+)\.(\d+)", str(version))
    return (int(match[1]), int(match[2])) if match else (0, 0)


def quoted(error):
    """An exception as one short line, for quoting inside a WeightsError."""
    text = one_line(f"{type(error).__name__}: {error}")
    return text if len(text) <= MAX_QUOTED else text[: MAX_QUOTED - 3] + "..."


def check_torch_version(torch, path):
    """Refuses to read `path` with a torch older than MIN_TORCH."""
    if version_tuple(torch.__version__) < MIN_TORCH:
        minimum = ".".join(map(str, MIN_TORCH))
        raise WeightsError(
            f"Refusing to read {path} with torch {torch.__version__}: torch.load(weights_only="
            f"True) before torch {minimum} has published bypasses that let a crafted file run "
            f"code. Upgrade (pip install -U 'torch>={minimum}'), or convert the file to "
            ".safetensors on a machine you trust and load that."
        )


def compressed_zip_record(path):
    """The name of the first compressed record of the zip archive `path`, else None.

    torch.save stores every record uncompressed; torch.load inflates a compressed one whole in
    memory before anything in it is checked, so a small file could ask for any amount. Only
    the central directory is read, which lies inside the file. None also for a file that is not
    a zip archive or whose directory is damaged: torch.load reports those.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - _ZIP_END.size - 0xFFFF))  # the end record and its comment
        tail = f.read()
        end = tail.rfind(b"PK\x05\x06")
        if end < 0 or end + _ZIP_END.size > len(tail):
            return None
        *_, entries, directory_size, directory_offset, _ = _ZIP_END.unpack_from(tail, end)
        locator = end - _ZIP64_LOCATOR.size
        if entries == 0xFFFF or 0xFFFFFFFF in (directory_size, directory_offset):
            if locator < 0 or tail[locator : locator + 4] != b"PK\x06\x07":
                return None
            f.seek(_ZIP64_LOCATOR.unpack_from(tail, locator)[2])
            record = f.read(_ZIP64_END.size)
            if len(record) < _ZIP64_END.size or record[:4] != b"PK\x06\x06":
                return None
            *_, directory_size, directory_offset = _ZIP64_END.unpack(record)
        if directory_offset + directory_size > size:
            return None
        f.seek(directory_offset)
        directory = f.read(directory_size)
    pos = 0
    while directory[pos : pos + 4] == b"PK\x01\x02" and pos + _ZIP_ENTRY.size <= len(directory):
        entry = _ZIP_ENTRY.unpack_from(directory, pos)
        method, name_size, extra_size, comment_size = entry[4], *entry[10:13]
        if method != ZIP_STORED:
            start = pos + _ZIP_ENTRY.size
            return directory[start : start + name_size].decode("utf-8", "replace")
        pos += _ZIP_ENTRY.size + name_size + extra_size + comment_size
    return None


def read_state_dict(path):
    """Reads a Torch state dict as NumPy arrays.

    `.safetensors` files need only the `safetensors` package; other files (`.pth`, `.pt`,
    `.bin`) are read with `torch.load(weights_only=True)`. A checkpoint dict that wraps the
    weights under "state_dict" or "model" is unwrapped, and the "module." prefix of
    DataParallel models is removed.

    Args:
      path: Path of the file.

    Returns:
      A dict from tensor name to `np.ndarray`.

    Raises:
      ImportError: when the package needed for the format is not installed.
      WeightsError: naming the file, when it cannot be read, holds no state dict, or torch is
        older than `MIN_TORCH`.
    """
    if str(path).endswith(".safetensors"):
        try:
            from safetensors import SafetensorError
            from safetensors.numpy import load_file
        except ImportError as e:
            raise ImportError(
                f"Reading {path} needs the safetensors package: pip install safetensors"
            ) from e
        try:
            return _strip_data_parallel(load_file(path))
        except (SafetensorError, OSError, ValueError, TypeError) as e:
            raise WeightsError(f"Cannot read {path} as safetensors: {quoted(e)}") from e
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"Reading {path} needs PyTorch (pip install torch), or convert it to .safetensors "
            "first, which needs only the safetensors package."
        ) from e
    check_torch_version(torch, path)
    try:
        compressed = compressed_zip_record(path)
    except OSError as e:
        raise WeightsError(f"Cannot read {path}: {quoted(e)}") from e
    if compressed is not None:
        raise WeightsError(
            f"{path} holds the compressed record {compressed!r}; torch.save writes every record "
            "uncompressed, and torch.load would inflate it whole before any check. Save the "
            "weights again with torch.save, or convert them to .safetensors."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling, zip and storage errors of many kinds
        raise WeightsError(
            f"Cannot read {path} with torch.load(weights_only=True), which builds only "
            f"tensors and plain containers: {quoted(e)}"
        ) from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise WeightsError(
            f"{path} does not hold a state dict (a dict of tensors); received a "
            f"{type(obj).__name__}."
        )
    return _strip_data_parallel({k: _to_numpy(v) for k, v in obj.items()})


def _to_numpy(tensor):
    tensor = tensor.detach()
    if tensor.is_floating_point():
        tensor = tensor.float()  # half / bfloat16 files: the model variables are float32
    return tensor.numpy()


def _strip_data_parallel(state_dict):
    prefix = "module."
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def torch_modules(model):
    """Lists the model's layers with the torchvision module each one corresponds to.

    Args:
      model: A resnext_tf model (`build_resnext` / `create_model`) with resnext_C or resnet
        blocks.

    Returns:
      A list of (torch module name, Keras layer, kind) in network order; kind is "conv",
      "bn" or "dense". The classifier is last and only present with `include_top`.

    Raises:
      ValueError: for resnext_B blocks or a model that is not a resnext_tf network.
    """
    try:
        modules = [
            (STEM_CONV, model.get_layer("stem_conv"), "conv"),
            (STEM_BN, model.get_layer("stem_bn"), "bn"),
        ]
    except ValueError as e:
        raise ValueError(
            f"Expected a resnext_tf model with stem_conv and stem_bn layers; received "
            f"{model.name!r}: {e}"
        ) from e
    for layer in model.layers:
        if isinstance(layer, Bottleneck):
            modules.extend(_block_modules(layer))
    if any(layer.name == "head" for layer in model.layers):
        modules.append((CLASSIFIER, model.get_layer("head"), "dense"))
    return modules


def _block_modules(block):
    match = BLOCK_NAME.fullmatch(block.name)
    if match is None:
        raise ValueError(
            f"Unexpected block name; received {block.name!r}, expected stage<s>_block<b>."
        )
    if block.bottleneck_type == "resnext_B":
        raise ValueError(
            f"Torch ResNeXt weights hold grouped convolutions (form C); received {block.name} "
            "with bottleneck_type='resnext_B'. Build the model with bottleneck_type="
            "'resnext_C', which computes the same function."
        )
    stage, index = int(match[1]), int(match[2])
    prefix = f"layer{stage}.{index - 1}"
    modules = [
        (f"{prefix}.{name}", getattr(block, name), "bn" if "bn" in name else "conv")
        for name in BLOCK_LAYERS
    ]
    if block.has_projection:
        modules += [
            (f"{prefix}.{torch_name}", getattr(block, attr), "bn" if "bn" in attr else "conv")
            for attr, torch_name in PROJECTION
        ]
    return modules


def _layer_tensors(module, layer, kind):
    """(variable, source name, transform) for each variable of one layer."""
    if kind == "conv":
        return [(layer.kernel, f"{module}.weight", lambda w: np.transpose(w, CONV_TO_KERAS))]
    if kind == "bn":
        return [(getattr(layer, var), f"{module}.{name}", None) for var, name in BN_TENSORS]
    return [(layer.kernel, f"{module}.weight", np.transpose), (layer.bias, f"{module}.bias", None)]


def _listing(names):
    names = sorted(names)
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def plan_assignment(model, state_dict, skip_classifier=False):
    """Matches every model variable with its tensor of `state_dict`, checking all of them.

    Args:
      model: A resnext_tf model (see `torch_modules`).
      state_dict: Dict from torchvision/timm tensor name to array.
      skip_classifier: Leave the model's classifier as it is and ignore the source's (a new
        classifier, as the original's -resetClassifier). Without a classifier in the model
        (include_top=False) the source's is always ignored.

    Returns:
      A list of (Keras variable, float32 value in Keras layout).

    Raises:
      WeightsError: naming the missing tensors, the tensors of the wrong shape, the unused
        tensors of the source and the model variables left without a value.
    """
    modules = torch_modules(model)
    has_head = modules[-1][2] == "dense"
    skip_head = skip_classifier or not has_head
    if skip_head:
        if has_head:
            modules = modules[:-1]
        ignored = {f"{CLASSIFIER}.weight", f"{CLASSIFIER}.bias"} & set(state_dict)
        if ignored:
            logger.info("Not loading the source classifier (%s).", _listing(ignored))
    else:
        ignored = set()
    used = set(ignored)
    plan, missing, mismatched, covered = [], [], [], set()
    for module, layer, kind in modules:
        if kind == "bn":
            used.add(f"{module}.{BN_COUNTER}")
        for variable, name, transform in _layer_tensors(module, layer, kind):
            used.add(name)
            covered.add(id(variable))
            if name not in state_dict:
                missing.append(name)
                continue
            value = np.asarray(state_dict[name], dtype=np.float32)
            source_shape = value.shape
            value = transform(value) if transform else value
            if value.shape != tuple(variable.shape):
                mismatched.append(
                    f"{name} {source_shape} (for {variable.path}, which needs "
                    f"{tuple(variable.shape)} in Keras layout)"
                )
            plan.append((variable, value))
    leftover = set(state_dict) - used
    if has_head and skip_head:
        covered |= {id(v) for v in model.get_layer("head").weights}
    unassigned = [v.path for v in model.weights if id(v) not in covered]
    _raise_on_problems(model, missing, mismatched, leftover, unassigned)
    return plan


def _raise_on_problems(model, missing, mismatched, leftover, unassigned):
    problems = [
        f"{what}: {_listing(names)}"
        for what, names in (
            ("missing in the source", missing),
            ("shape mismatch", mismatched),
            ("unused source tensors", leftover),
            ("model variables without a source", unassigned),
        )
        if names
    ]
    if not problems:
        return
    hint = ""
    if any(name.startswith(f"{CLASSIFIER}.") for name in mismatched):
        hint = (
            " The classifiers differ in size: build the model with the source's number of "
            "classes, or pass skip_classifier=True to keep a new classifier."
        )
    raise WeightsError(
        f"The state dict does not match model {model.name!r}; {'; '.join(problems)}.{hint}"
    )


def assign_state_dict(model, state_dict, skip_classifier=False):
    """Sets the model's weights (BatchNorm running statistics included) from a state dict.

    Nothing is assigned unless the whole state dict matches; see `plan_assignment`.

    Args:
      model: A resnext_tf model.
      state_dict: Dict from torchvision/timm tensor name to array.
      skip_classifier: Keep the model's classifier; see `plan_assignment`.
    """
    for variable, value in plan_assignment(model, state_dict, skip_classifier):
        variable.assign(value)
