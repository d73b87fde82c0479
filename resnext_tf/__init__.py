"""resnext_tf: ResNeXt for TensorFlow / Keras 3 with the original fb.resnet.torch recipe.

The model code here is pure Keras 3 and runs on the TensorFlow, JAX and PyTorch backends. The
TensorFlow-only parts (input pipelines, distributed training, SavedModel export) live in
`resnext_tf.data`, `resnext_tf.training` and `resnext_tf.export`, imported on demand. Importing
the package before TensorFlow turns TensorFlow's oneDNN kernels on where TensorFlow would leave
them off (`resnext_tf.hardware.request_onednn`), unless TF_ENABLE_ONEDNN_OPTS is set.
"""

from resnext_tf import hardware

# Before Keras imports TensorFlow: TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, at import.
hardware.request_onednn()

from resnext_tf.backend_ops import resolve_conv_impl
from resnext_tf.flops import count_flops
from resnext_tf.layers import Bottleneck, GroupedConv2D
from resnext_tf.registry import create_model, list_models, model_kwargs
from resnext_tf.resnext import build_resnext

__version__ = "0.1.0"

__all__ = [
    "Bottleneck",
    "GroupedConv2D",
    "build_resnext",
    "count_flops",
    "create_model",
    "list_models",
    "model_kwargs",
    "resolve_conv_impl",
]
