"""Export and serving where TensorFlow runs without oneDNN, forced on whatever CPU runs the tests.

TensorFlow leaves oneDNN off on CPUs without AVX512-VNNI, AVX512-BF16 or AMX (and with
TF_ENABLE_ONEDNN_OPTS=0). Its own kernels then compute grouped convolutions forward only, which
is all an export needs: every format is written and checked against the Keras model in a
child process with TF_ENABLE_ONEDNN_OPTS=0, and the SavedModel's serving_default answers real
JPEG bytes.
"""

import os

from child_process import run_child

HERE = os.path.dirname(os.path.abspath(__file__))

EXPORT_WITHOUT_ONEDNN = """
import sys, tempfile
import numpy as np, tensorflow as tf
from tensorflow.python.util import _pywrap_util_port
sys.path.insert(0, {here!r})
from data.image_samples import encode, natural_image
from test_deploy import (FLOAT32_RTOL, SIZE, litert_logits, max_relative_error, onnx_logits,
                         openvino_logits, saved_model_logits, tiny)
from resnext_tf import export, tf_ops
from resnext_tf.data import evaluation, transforms
from resnext_tf.data.config import DataConfig

assert not _pywrap_util_port.IsMklEnabled()
assert not tf_ops.grouped_conv_supported() and tf_ops.grouped_conv_supported(gradients=False)
model = tiny(seed=3)
rng = np.random.default_rng(4)
jpegs = [encode(natural_image(rng, 90 + 9 * i, 130 - 7 * i)) for i in range(4)]
cfg = DataConfig("imagenet", image_size=SIZE)
images = np.stack([evaluation.imagenet_eval(tf.constant(j), cfg).numpy() for j in jpegs])
# The reference: the unfolded Keras model, whose grouped convolutions run here as Keras' own
# (XLA-compiled) kernel: an independent computation of the same logits.
reference = model(images, training=False).numpy()
runtimes = {{
    "saved_model": saved_model_logits,
    "onnx": onnx_logits,
    "openvino": lambda path, x: openvino_logits(path, x, "f32"),
    "litert": litert_logits,
}}
root = tempfile.mkdtemp()
for fmt in export.FORMATS:
    path = export.export_model(model, root, "tiny_" + fmt, 1, fmt=fmt)
    error = max_relative_error(runtimes[fmt](path, images), reference)
    assert error <= FLOAT32_RTOL, (fmt, error)
    print(fmt, "ok")
served = tf.saved_model.load(root + "/tiny_saved_model/1").signatures["serving_default"]
out = served(image_bytes=tf.constant(jpegs))
assert max_relative_error(out["logits"].numpy(), reference) <= FLOAT32_RTOL
np.testing.assert_array_equal(out["classes"][:, 0], reference.argmax(1))
print("serving_default ok")
"""


def test_every_format_exports_and_serves_jpegs_without_onednn():
    out = run_child(
        EXPORT_WITHOUT_ONEDNN.format(here=HERE), TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="3"
    )
    assert out.split("\n")[-5:-1] == ["onnx ok", "openvino ok", "litert ok", "serving_default ok"]
    assert "saved_model ok" in out
