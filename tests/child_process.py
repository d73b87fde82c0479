"""Runs test code in a fresh Python process: another Keras backend or other TensorFlow settings,
which cannot change once this process has imported Keras and TensorFlow, or a reader whose peak
memory or crash must not be this process's."""

import json
import os
import subprocess
import sys
import textwrap

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


# Runs first in a child of `peak_growth`: imports resnext_tf modules without the package's
# __init__, which loads Keras and TensorFlow that the readers measured do not need, so the
# child starts in a fraction of a second and its memory is the reader's.
_WITHOUT_PACKAGE_INIT = """
import os, sys, types
for _name in ("resnext_tf", "resnext_tf.data", "resnext_tf.weights"):
    _package = types.ModuleType(_name)
    _package.__path__ = [os.path.join(REPO, *_name.split("."))]
    sys.modules[_name] = _package
"""

_MEASURED = """
import json, sys
REPO = {repo!r}
sys.path.insert(0, REPO)
{imports}
{setup}


def _kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from the current RSS
_before = _kib("VmRSS")
_error = ""
try:
{action}
except Exception as e:
    _error = f"{{type(e).__name__}}: {{e}}"
print(json.dumps({{"growth_mib": (_kib("VmHWM") - _before) / 2**10, "error": _error}}))
"""


def peak_growth(setup, action, package_init=False, timeout=120):
    """Runs `setup`, then `action`, in a fresh Python process.

    Returns:
        (growth, error, stderr): how far the peak resident memory rose during `action` over the
        memory before it, in MiB, what `action` raised as "Type: message" ("" when nothing),
        and what the child wrote on stderr. A child that crashes or hangs fails the calling
        test.
    """
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _MEASURED.format(
        repo=repo,
        imports="" if package_init else _WITHOUT_PACKAGE_INIT,
        setup=setup,
        action=textwrap.indent(action, "    "),
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-3000:]}"
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    return outcome["growth_mib"], outcome["error"], result.stderr
