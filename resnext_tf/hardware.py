"""The CPU this process runs on, oneDNN's state in TensorFlow, and the request to turn oneDNN on.

TensorFlow's x86 builds turn oneDNN on by themselves only on CPUs with AVX512-VNNI, AVX512-BF16
or AMX; elsewhere its own kernels lack the grouped-convolution gradient and are slower, so
importing resnext_tf asks for oneDNN (`request_onednn`) unless TF_ENABLE_ONEDNN_OPTS is set
(docs/performance.md). Only `onednn_enabled` imports TensorFlow.
"""

import logging
import os
import platform
import sys

logger = logging.getLogger(__name__)

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
CPUINFO = "/proc/cpuinfo"
# Machines whose TensorFlow builds ship oneDNN (x86-64 Linux and Windows).
ONEDNN_MACHINES = ("x86_64", "amd64")
# TensorFlow turns oneDNN on by itself on CPUs with any of these /proc/cpuinfo flags.
ONEDNN_DEFAULT_FLAGS = ("avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
# /proc/cpuinfo flags of the instruction sets that decide the kernels, widest first.
ISA_FLAGS = (
    ("AMX", "amx_tile"),
    ("AVX512-BF16", "avx512_bf16"),
    ("AVX512-VNNI", "avx512_vnni"),
    ("AVX-512", "avx512f"),
    ("AVX2", "avx2"),
)
# Native bfloat16 arithmetic: AVX512-BF16 (dot products) and AMX.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_EMULATED = (
    "bfloat16 was requested, but this CPU has no native bfloat16 instructions ({flags} not in "
    "/proc/cpuinfo): bfloat16 is emulated there and usually slower than float32. Use float32 "
    "on such machines."
)

# Set by `request_onednn` when it turned oneDNN on.
_requested = False


def request_onednn(environ=None, modules=None, machine=None, flags=None):
    """Sets TF_ENABLE_ONEDNN_OPTS=1 where TensorFlow would leave oneDNN off; True if it did.

    Not where the variable is set (the user's choice), TensorFlow is imported (it reads the
    variable once), off x86-64, or on a CPU with ONEDNN_DEFAULT_FLAGS.

    Args:
      environ, modules, machine, flags: os.environ, sys.modules, platform.machine() and
        `cpu_flags()` by default.
    """
    global _requested
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    machine = (machine or platform.machine()).lower()
    if ONEDNN_ENV in environ or "tensorflow" in modules or machine not in ONEDNN_MACHINES:
        return False
    flags = cpu_flags() if flags is None else flags
    if flags and flags & set(ONEDNN_DEFAULT_FLAGS):
        return False
    environ[ONEDNN_ENV] = "1"
    _requested = True
    return True


def cpu_flags(path=CPUINFO):
    """The set of CPU feature flags in /proc/cpuinfo, or None where it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def cpu_model(path=CPUINFO):
    """The CPU's model name from /proc/cpuinfo, else platform.processor() or the machine."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa(flags):
    """The widest instruction sets of ISA_FLAGS present, e.g. "AVX2" or "AMX, AVX512-BF16, ..."."""
    if flags is None:
        return "unknown instruction sets"
    names = [name for name, flag in ISA_FLAGS if flag in flags]
    return ", ".join(names) if names else "no AVX2"


def native_bf16(path=CPUINFO):
    """True where the CPU has bfloat16 instructions, False where it lacks them, None unknown."""
    flags = cpu_flags(path)
    if flags is None:
        return None
    return bool(flags & set(BF16_CPU_FLAGS))


def bf16_emulation_warning(dtype, path=CPUINFO):
    """The warning for `dtype` ("bfloat16", "mixed_bfloat16", ...) on a CPU without native
    bfloat16 instructions, or None where bfloat16 is native, unknown or not asked for."""
    if "bfloat16" not in str(dtype) or native_bf16(path) is not False:
        return None
    return BF16_EMULATED.format(flags=" / ".join(BF16_CPU_FLAGS))


def warn_if_bf16_emulated(dtype, path=CPUINFO):
    """Logs `bf16_emulation_warning` where there is one, and returns it."""
    message = bf16_emulation_warning(dtype, path)
    if message:
        logger.warning(message)
    return message


def onednn_enabled():
    """Whether TensorFlow runs its oneDNN kernels in this process (imports TensorFlow)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def onednn_state(environ=None):
    """oneDNN's state in words: on or off, and who decided (imports TensorFlow)."""
    environ = os.environ if environ is None else environ
    state = "on" if onednn_enabled() else "off"
    if _requested:
        return f"oneDNN {state} (asked for by resnext_tf; {ONEDNN_ENV}=0 turns it off)"
    if ONEDNN_ENV in environ:
        return f"oneDNN {state} ({ONEDNN_ENV}={environ[ONEDNN_ENV]})"
    return f"oneDNN {state} (TensorFlow's default on this CPU)"


def describe(path=CPUINFO):
    """One line for logs and benchmark headers: CPU model, instruction sets, oneDNN's state."""
    return f"CPU: {cpu_model(path)} ({cpu_isa(cpu_flags(path))}); {onednn_state()}"
