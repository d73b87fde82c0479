"""Packaging for resnext_tf: ResNeXt for TensorFlow / Keras 3."""

from setuptools import find_packages, setup

setup(
    name="resnext_tf",
    version="0.1.0",
    description=(
        "ResNeXt (Xie et al., 'Aggregated Residual Transformations for Deep Neural "
        "Networks') for TensorFlow / Keras 3, with the original fb.resnet.torch recipe."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages(include=["resnext_tf", "resnext_tf.*", "flags", "flags.*"]),
    py_modules=["run_cifar", "run_imagenet"],
    package_data={"resnext_tf": ["data_files/*.json"]},
    install_requires=[
        "tensorflow>=2.20",
        "keras>=3.11",  # earlier Keras has published safe_mode bypasses (.keras files)
        "tensorflow-datasets",
        # tensorflow-datasets 4.9 imports it to download or prepare any dataset but does not
        # declare it.
        "importlib_resources",
        "absl-py",
        "numpy",
    ],
    extras_require={
        "plot": ["matplotlib"],
        "weights": ["safetensors"],
        # Writes the TF Serving warm-up requests next to an exported SavedModel.
        "serving": ["tensorflow-serving-api"],
        # python -m resnext_tf.export --format=onnx|openvino|litert: Keras' exporters and the
        # runtimes that run the exports (the versions the parity tests ran with).
        "onnx": ["onnx>=1.23", "onnxruntime>=1.32", "tf2onnx>=1.17"],
        "openvino": ["openvino>=2026.4"],
        "litert": ["ai-edge-litert>=2.3"],
        # --precision=int8 in each of those formats: NNCF quantizes the OpenVINO IR (ONNX
        # Runtime's and the TFLite converter's quantizers ship with the extras above).
        "int8": [
            "nncf>=3.4",
            "openvino>=2026.4",
            "onnx>=1.23",
            "onnxruntime>=1.32",
            "tf2onnx>=1.17",
            "ai-edge-litert>=2.3",
        ],
        # Everything the test suite exercises, so that README's two commands run every test:
        # the optional extras above (the export formats' runtimes and NNCF included), the JAX
        # backend, and torch/torchvision as the reference side of the weight-conversion tests
        # (torch >= 2.10: .pth files are read with weights_only=True, which older releases let
        # crafted files bypass).
        "test": [
            "pytest>=7",
            # README's test command runs two files at a time (-n 2 --dist=loadfile).
            "pytest-xdist>=3",
            "pillow",
            "jax[cpu]",
            "ruff",
            "matplotlib",
            "safetensors",
            "tensorflow-serving-api",
            "torch>=2.10",
            "torchvision",
            "onnx>=1.23",
            "onnxruntime>=1.32",
            "tf2onnx>=1.17",
            "openvino>=2026.4",
            "ai-edge-litert>=2.3",
            "nncf>=3.4",
        ],
    },
)
