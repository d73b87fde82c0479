"""`resnext_tf/timing.py`, loaded by its path for the processes that time other frameworks.

Importing it as `resnext_tf.timing` would run the package's `__init__`, which imports Keras (and
with it TensorFlow, JAX or torch as the backend). The torchvision, ONNX Runtime, OpenVINO and
LiteRT processes must hold only their own runtime, yet time and report exactly as
`resnext_tf.benchmark` does, so they execute the one file on its own. The scripts of this folder
import this module as a sibling (Python puts a script's folder first on sys.path), so they run
from any working directory.
"""

import importlib.util
import os

PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resnext_tf", "timing.py"
)
_spec = importlib.util.spec_from_file_location("resnext_tf_timing", PATH)
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)
