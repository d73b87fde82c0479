"""User errors: one line on stderr, exit code 2 and no traceback from the entry points, and the
traceback on request."""

import io
import os
import subprocess
import sys

import pytest

from resnext_tf import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_kinds_are_also_the_builtin_errors_callers_catch():
    assert issubclass(errors.DataError, ValueError)
    assert issubclass(errors.WeightsError, ValueError)
    assert issubclass(errors.CheckpointError, RuntimeError)
    assert issubclass(errors.LockedError, RuntimeError)
    for kind in (errors.DataError, errors.WeightsError, errors.CheckpointError, errors.LockedError):
        assert issubclass(kind, errors.UserError)


def test_decorated_main_reports_one_line_and_exits_2(monkeypatch, capsys):
    monkeypatch.delenv(errors.TRACEBACK_ENV, raising=False)

    @errors.user_errors_exit
    def main():
        raise errors.DataError("data_dir='/nowhere' does not exist;\n  expected a folder")

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == errors.EXIT_USER_ERROR == 2
    err = capsys.readouterr().err
    assert err == "error: data_dir='/nowhere' does not exist; expected a folder\n"


def test_other_exceptions_are_not_swallowed():
    @errors.user_errors_exit
    def main():
        raise KeyError("a bug, not a user error")

    with pytest.raises(KeyError):
        main()


@pytest.mark.parametrize("value, shown", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_traceback_switch(monkeypatch, value, shown):
    monkeypatch.setenv(errors.TRACEBACK_ENV, value)
    stream = io.StringIO()
    try:
        raise errors.WeightsError("bad.pth is not a weights file")
    except errors.WeightsError as e:
        errors.report(e, stream)
    text = stream.getvalue()
    assert ("Traceback (most recent call last)" in text) == shown
    assert text.splitlines()[-1] == "error: bad.pth is not a weights file"


def run_entry(script, args, **env):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, script), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **env},
        timeout=300,
    )


def assert_user_error(result, *needles):
    assert result.returncode == errors.EXIT_USER_ERROR, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-3000:]
    for needle in needles:
        assert needle in last, last


@pytest.mark.slow
def test_run_cifar_missing_data_dir(tmp_path):
    missing = str(tmp_path / "no_such_folder")
    result = run_entry(
        "run_cifar.py", [f"--data_dir={missing}", f"--model_dir={tmp_path / 'run'}"]
    )
    assert_user_error(result, missing)


@pytest.mark.slow
def test_run_cifar_data_dir_that_is_not_an_archive(tmp_path):
    fake = tmp_path / "cifar-10-python.tar.gz"
    fake.write_bytes(b"this is not a gzip file\n" * 10)
    result = run_entry("run_cifar.py", [f"--data_dir={fake}", f"--model_dir={tmp_path / 'run'}"])
    assert_user_error(result, str(fake))
    assert "ReadError" not in result.stderr


@pytest.mark.slow
def test_traceback_on_request(tmp_path):
    missing = str(tmp_path / "no_such_folder")
    result = run_entry(
        "run_cifar.py",
        [f"--data_dir={missing}", f"--model_dir={tmp_path / 'run'}"],
        **{errors.TRACEBACK_ENV: "1"},
    )
    assert result.returncode == errors.EXIT_USER_ERROR
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.slow
def test_export_with_a_bad_weights_file(tmp_path):
    bad = tmp_path / "model.weights.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # an HDF5 signature, then nothing
    result = subprocess.run(
        [sys.executable, "-m", "resnext_tf.export", "--model=resnext50_32x4d",
         f"--weights={bad}", f"--export_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    assert_user_error(result, str(bad))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.pb"))
