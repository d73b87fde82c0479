"""Published ResNeXt/ResNet weights for resnext_tf models.

Converters from torchvision/timm state dicts (.pth via torch, .safetensors without it) and from
the original Torch7 models (.t7, read by our own bounded reader), a registry of known weight
names with verified download and cache, and `load_weights`, which accepts any of them. Torch
and safetensors are optional: each is imported only to read its own format. Every file is
untrusted input: a file that cannot be used raises a one-line WeightsError naming it.
"""

from resnext_tf.weights.loading import (
    architecture_name,
    convert_weights,
    load_keras_model,
    load_weights,
    read_source,
)
from resnext_tf.weights.pretrained import (
    KNOWN_NAMES,
    PRETRAINED,
    WeightsUnavailable,
    list_pretrained,
    resolve_weights,
)
from resnext_tf.weights.state_dict import assign_state_dict, read_state_dict, torch_modules
from resnext_tf.weights.torch7 import read_t7

__all__ = [
    "KNOWN_NAMES",
    "PRETRAINED",
    "WeightsUnavailable",
    "architecture_name",
    "assign_state_dict",
    "convert_weights",
    "list_pretrained",
    "load_keras_model",
    "load_weights",
    "read_source",
    "read_state_dict",
    "read_t7",
    "resolve_weights",
    "torch_modules",
]
