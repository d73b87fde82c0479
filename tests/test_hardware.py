"""The CPU description, the bfloat16 check, and the request for oneDNN on import."""

import logging
import os
import subprocess
import sys

import pytest
from child_process import run_child

from resnext_tf import hardware


def cpuinfo(tmp_path, flags, model="Test CPU 9000"):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: {flags}\n")
    return str(path)


@pytest.mark.parametrize(
    "flags, native",
    [("fpu avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True), ("fpu avx512f", False)],
)
def test_bf16_support_is_read_from_cpuinfo(tmp_path, caplog, flags, native):
    path = cpuinfo(tmp_path, flags)
    assert hardware.native_bf16(path) is native
    with caplog.at_level(logging.WARNING):
        message = hardware.warn_if_bf16_emulated("bfloat16", path)
    assert (message is None) == native
    assert ("emulated" in caplog.text) != native
    assert (hardware.bf16_emulation_warning("mixed_bfloat16", path) is None) == native
    assert hardware.warn_if_bf16_emulated("float32", path) is None
    assert hardware.native_bf16(str(tmp_path / "missing")) is None


@pytest.mark.parametrize(
    "flags, isa",
    [
        ("fpu sse2 avx avx2 fma", "AVX2"),
        ("avx2 avx512f avx512_vnni", "AVX512-VNNI, AVX-512, AVX2"),
        ("avx2 avx512f avx512_bf16 amx_tile amx_bf16", "AMX, AVX512-BF16, AVX-512, AVX2"),
        ("fpu sse2", "no AVX2"),
    ],
)
def test_cpu_model_and_instruction_sets(tmp_path, flags, isa):
    path = cpuinfo(tmp_path, flags, model="AMD EPYC 7B12")
    assert hardware.cpu_model(path) == "AMD EPYC 7B12"
    assert hardware.cpu_isa(hardware.cpu_flags(path)) == isa
    assert hardware.cpu_isa(None) == "unknown instruction sets"


AVX2 = {"avx", "avx2", "fma"}
AMX = AVX2 | {"avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"}


@pytest.mark.parametrize(
    "environ, modules, machine, flags, asked",
    [
        ({}, {}, "x86_64", AVX2, True),
        ({}, {}, "AMD64", AVX2, True),
        ({}, {}, "x86_64", set(), True),  # flags unknown: asking is harmless
        ({}, {}, "x86_64", AMX, False),  # TensorFlow turns it on by itself
        ({}, {}, "x86_64", AVX2 | {"avx512f", "avx512_vnni"}, False),
        ({hardware.ONEDNN_ENV: "0"}, {}, "x86_64", AVX2, False),  # the user's choice stands
        ({hardware.ONEDNN_ENV: "1"}, {}, "x86_64", AVX2, False),
        ({}, {"tensorflow": object()}, "x86_64", AVX2, False),  # too late: TF read it at import
        ({}, {}, "aarch64", AVX2, False),
    ],
)
def test_onednn_is_requested_only_where_tensorflow_leaves_it_off(
    monkeypatch, environ, modules, machine, flags, asked
):
    monkeypatch.setattr(hardware, "_requested", False)
    before = dict(environ)
    assert hardware.request_onednn(environ, modules, machine, flags) is asked
    assert environ == ({**before, hardware.ONEDNN_ENV: "1"} if asked else before)


IMPORT_ORDER_CHILD = """
import os, resnext_tf
from resnext_tf import hardware
from resnext_tf.backend_ops import explain_conv_impl
print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"), hardware.onednn_enabled())
print(hardware.describe())
print(*explain_conv_impl("auto"), sep=": ")
"""


def test_importing_the_package_turns_onednn_on_unless_the_user_chose():
    env = {k: v for k, v in os.environ.items() if k != hardware.ONEDNN_ENV}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"

    def child(**extra):
        result = subprocess.run(
            [sys.executable, "-c", IMPORT_ORDER_CHILD],
            capture_output=True,
            text=True,
            env={**env, **extra},
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.splitlines()

    # Whichever CPU runs this: oneDNN ends up on, by TensorFlow's default or at our request.
    first, described, impl = child()
    by_tensorflow = bool(set(hardware.ONEDNN_DEFAULT_FLAGS) & (hardware.cpu_flags() or set()))
    assert first == ("None True" if by_tensorflow else "1 True")
    assert ("TensorFlow's default" if by_tensorflow else "asked for by resnext_tf") in described
    assert hardware.cpu_model() in described and "oneDNN on" in described
    assert impl == "grouped: TensorFlow runs grouped convolutions natively, forward and gradients"
    first, described, impl = child(TF_ENABLE_ONEDNN_OPTS="0")
    assert first == "0 False"
    assert "oneDNN off (TF_ENABLE_ONEDNN_OPTS=0)" in described
    assert impl.startswith("split: TensorFlow has no native grouped gradient here (oneDNN is off")


def test_tensorflow_imported_first_keeps_its_default():
    out = run_child(
        "import tensorflow, resnext_tf, os; print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'))",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    assert out.split()[-1] == str(os.environ.get(hardware.ONEDNN_ENV))
