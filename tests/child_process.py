"""Runs test code in a fresh Python process: another Keras backend or other TensorFlow settings,
which cannot change once this process has imported Keras and TensorFlow."""

import os
import subprocess
import sys

JAX_CPU = {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}


def run_child(code, **env):
    """Runs `code` with `env` added to the environment; returns its stdout, failing on an error."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def run_jax_child(code):
    """run_child on the Keras JAX backend (CPU); the test extra installs JAX."""
    return run_child(code, **JAX_CPU)
