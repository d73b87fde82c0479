"""A model_dir holds one run: the lock (a second run fails at once, a dead run's lock is taken
over), fresh starts over old checkpoints (refused; --overwrite), damaged checkpoints met by the
entry point (warning, then the newest checkpoint that verifies)."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import tensorflow as tf
from test_interruptions import checkpoint_values, start, wait_for
from train_helpers import REPO, TINY_MODEL, check_ok, csv_rows, results, run_script, script_env

from resnext_tf import checkpoints
from resnext_tf.errors import EXIT_USER_ERROR, CheckpointError, LockedError
from resnext_tf.training.checkpoint import CheckpointManager
from resnext_tf.training.lock import LOCK_FILE, ModelDirLock
from resnext_tf.training.metrics import Errors
from resnext_tf.training.run_log import RunLogger

# Epochs of two steps of 32 images; evaluation over the fixture's 100 test images.
ARGS = [*TINY_MODEL, "--batch_size=32", "--steps_per_epoch=2", "--log_steps=1"]

HOLD_LOCK = """
import sys, time
from resnext_tf.training.lock import ModelDirLock
ModelDirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def lock_record(model_dir):
    with open(os.path.join(model_dir, LOCK_FILE)) as f:
        return json.load(f)


def test_lock_is_exclusive_and_a_dead_holder_is_taken_over(tmp_path):
    model_dir = str(tmp_path / "run")
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, model_dir],
        stdout=subprocess.PIPE,
        text=True,
        env=script_env(),
        cwd=REPO,
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError) as error:
            ModelDirLock(model_dir).acquire()
        assert f"pid {child.pid} on host {socket.gethostname()}" in str(error.value)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert lock_record(model_dir)["pid"] == child.pid  # left behind by the killed holder
    with pytest.warns(UserWarning, match=f"left by pid {child.pid} .*no longer runs"):
        lock = ModelDirLock(model_dir).acquire()
    assert lock_record(model_dir)["pid"] == os.getpid()
    lock.release()
    assert not os.path.exists(os.path.join(model_dir, LOCK_FILE))


def test_lock_of_this_process_is_exclusive_too(tmp_path):
    with ModelDirLock(str(tmp_path)):
        with pytest.raises(LockedError, match=f"pid {os.getpid()} "):
            ModelDirLock(str(tmp_path)).acquire()
    with ModelDirLock(str(tmp_path)):  # released on exit
        pass


def test_lock_left_on_another_host_is_not_taken_silently(tmp_path):
    record = {"pid": 1, "host": "elsewhere.example", "started": "2020-01-01T00:00:00+00:00"}
    with open(tmp_path / LOCK_FILE, "w") as f:
        json.dump(record, f)
    with pytest.raises(LockedError, match=r"pid 1 on host elsewhere.example.*remove .*run.lock"):
        ModelDirLock(str(tmp_path)).acquire()


def test_a_lock_path_that_is_not_a_file_is_refused_and_left_alone(tmp_path):
    # Through a symbolic link, ftruncate and pwrite replaced the target's contents.
    target = tmp_path / "thesis.txt"
    target.write_text("three years of work")
    kinds = [
        ("is a symbolic link", lambda path: os.symlink(target, path)),
        ("is a symbolic link", lambda path: os.symlink(tmp_path / "missing", path)),
        ("is not a regular file (a FIFO or device)", os.mkfifo),
        ("is a folder", os.mkdir),
    ]
    for k, (problem, make) in enumerate(kinds):
        model_dir = tmp_path / f"run{k}"
        model_dir.mkdir()
        make(model_dir / LOCK_FILE)
        with pytest.raises(CheckpointError) as error:
            ModelDirLock(str(model_dir)).acquire()
        message = str(error.value)
        assert f"{model_dir / LOCK_FILE} {problem}" in message, message
        assert "Remove it" in message and "\n" not in message
        assert os.path.lexists(model_dir / LOCK_FILE)  # left as it was
    assert target.read_text() == "three years of work"


def test_a_model_dir_that_cannot_hold_a_run_is_a_one_line_error(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(CheckpointError, match="afile' cannot hold a run: it exists and is not a"):
        ModelDirLock(str(afile)).acquire()
    with pytest.raises(CheckpointError, match=r"it cannot be created \(Not a directory\)"):
        ModelDirLock(str(afile / "run")).acquire()
    # A read-only model_dir (root writes through permission bits; a read-only mount does not).
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if os.fspath(path).endswith(LOCK_FILE):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(CheckpointError) as error:
        ModelDirLock(str(tmp_path)).acquire()
    assert str(error.value) == (
        f"model_dir={str(tmp_path)!r} cannot hold a run: its lock file {tmp_path / LOCK_FILE} "
        "cannot be created or opened (Read-only file system). Make it writable, or pass "
        "another --model_dir."
    )


def _run_files(model_dir):
    """A model_dir as a run leaves it: two checkpoints and their pointers, train_log.csv and
    TensorBoard events of both splits; and a file of the user's beside them."""
    manager = CheckpointManager(str(model_dir), {"v": tf.Variable(1.0)})
    manager.save(checkpoints.epoch_name(1), {"epoch": 1}, is_best=True)
    manager.save(checkpoints.step_name(7), {"epoch": 2})
    logger = RunLogger(str(model_dir))
    errors = Errors(1.0, 50.0, 10.0, 100)
    logger.epoch(1, 0.1, errors, errors, 1.0, 100.0, ema=errors)
    (model_dir / "notes.txt").write_text("mine")
    return manager


def _tree(root):
    return sorted(
        (
            os.path.relpath(os.path.join(folder, name), root),
            os.path.islink(os.path.join(folder, name)),
        )
        for folder, dirs, files in os.walk(root)
        for name in dirs + files
    )


def test_overwrite_deletes_what_a_run_wrote_and_nothing_else(tmp_path):
    manager = _run_files(tmp_path)
    assert {"train_log.csv", "tensorboard/train", "tensorboard/val"} <= {
        p for p, _ in _tree(tmp_path)
    }
    with ModelDirLock(str(tmp_path)):
        manager.remove_all()
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


FOREIGN = {
    "checkpoints/thesis_model.pt": "is not a checkpoint of a run",
    "checkpoints/epoch-0001/notes.txt": "is not a file of a checkpoint",
    "checkpoints/epoch-1": "is not a checkpoint of a run",
    "tensorboard/notes.txt": "is not the train/ or val/ folder of a run's events",
    "tensorboard/train/notes.txt": "is not a TensorBoard event file of a run",
}


@pytest.mark.parametrize("relative", [*FOREIGN, "train_log.csv", "latest", "links"])
def test_overwrite_refuses_a_file_no_run_wrote_and_deletes_nothing(relative, tmp_path):
    # --overwrite deleted checkpoints/, train_log.csv and tensorboard/ whatever they held.
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    manager = _run_files(model_dir)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    if relative == "train_log.csv":
        (model_dir / relative).write_text("my,own,log\n")
        problem = "does not start with a run's header"
    elif relative == "latest":
        relative = "checkpoints/best"
        (model_dir / relative).write_bytes(b"x" * 5000)
        problem = "is not a checkpoint pointer"
    elif relative == "links":  # each link is refused, its target left alone
        for name in ("checkpoints", "tensorboard", "train_log.csv"):
            os.rename(model_dir / name, outside / name)
            os.symlink(outside / name, model_dir / name)
        relative = "checkpoints"
        problem = "is a symbolic link (--overwrite follows none)"
    else:
        (model_dir / relative).write_text("mine")
        problem = FOREIGN[relative]
    before = _tree(tmp_path)
    with ModelDirLock(str(model_dir)), pytest.raises(CheckpointError) as error:
        manager.remove_all()
    message = str(error.value)
    assert message.startswith(f"--overwrite refused: {model_dir / relative} {problem}"), message
    assert "\n" not in message and "pass another --model_dir" in message
    assert _tree(tmp_path) == before


@pytest.mark.slow
def test_second_run_on_a_model_dir_fails_at_once_and_the_first_finishes(cifar_dir, tmp_path):
    args = [*ARGS, f"--data_dir={cifar_dir}", f"--model_dir={tmp_path}"]
    first = start([*args, "--epochs=100"])
    try:
        wait_for(first, r"Epoch: \[1\]\[1/2\]")
        second = run_script("run_cifar.py", [*args, "--epochs=1"])
    except BaseException:
        first.kill()
        raise
    assert second.returncode == EXIT_USER_ERROR, second.stdout + second.stderr[-3000:]
    assert f"pid {first.pid} on host {socket.gethostname()}" in second.stderr
    assert "Epoch:" not in second.stdout  # it never started training
    first.send_signal(signal.SIGTERM)  # the first run stops as usual
    rest = first.stdout.read()
    assert first.wait() == 0, rest
    assert "Preempted" in rest
    assert not os.path.exists(os.path.join(tmp_path, LOCK_FILE))
    assert checkpoints.verify(checkpoints.find_checkpoint(str(tmp_path))) is None


@pytest.mark.slow
def test_fresh_start_over_old_checkpoints_needs_overwrite(cifar_dir, tmp_path):
    args = [*ARGS, f"--data_dir={cifar_dir}", f"--model_dir={tmp_path}", "--epochs=1"]
    check_ok(run_script("run_cifar.py", [*args, "--seed=0"]))
    old = checkpoint_values(checkpoints.find_checkpoint(str(tmp_path)))

    refused = run_script("run_cifar.py", [*args, "--seed=1", "--resume=none"])
    assert refused.returncode == EXIT_USER_ERROR, refused.stdout + refused.stderr[-3000:]
    assert "holds checkpoints" in refused.stderr and "--overwrite" in refused.stderr
    assert "Epoch:" not in refused.stdout
    assert checkpoint_values(checkpoints.find_checkpoint(str(tmp_path))).keys() == old.keys()

    out = check_ok(run_script("run_cifar.py", [*args, "--seed=1", "--resume=none", "--overwrite"]))
    assert "Overwrite: removing" in out
    latest = checkpoints.find_checkpoint(str(tmp_path))
    assert latest.endswith("epoch-0001")
    assert checkpoints.read_state(latest)["config"]["seed"] == 1
    new = checkpoint_values(latest)
    assert any((new[name] != old[name]).any() for name in old)
    assert [row["epoch"] for row in csv_rows(str(tmp_path))] == [1]


@pytest.mark.slow
def test_overwrite_of_a_folder_that_is_no_run_stops_with_one_line(cifar_dir, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "thesis_model.pt").write_text("three years of work")
    args = [*ARGS, f"--data_dir={cifar_dir}", f"--model_dir={tmp_path}", "--epochs=1"]
    refused = run_script("run_cifar.py", [*args, "--resume=none", "--overwrite"])
    assert refused.returncode == EXIT_USER_ERROR, refused.stdout + refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines()[-1].startswith(
        f"error: --overwrite refused: {tmp_path / 'checkpoints' / 'thesis_model.pt'} is not a "
    )
    assert (tmp_path / "checkpoints" / "thesis_model.pt").read_text() == "three years of work"


@pytest.mark.slow
def test_truncated_newest_checkpoint_test_only_and_resume_use_the_previous(cifar_dir, tmp_path):
    args = [*ARGS, f"--data_dir={cifar_dir}", f"--model_dir={tmp_path}", "--epochs=2"]
    check_ok(run_script("run_cifar.py", args))
    second = os.path.join(tmp_path, "checkpoints", "epoch-0002")
    (data,) = [n for n in os.listdir(second) if n.startswith("ckpt.data")]
    with open(os.path.join(second, data), "r+b") as f:
        f.truncate(100)

    tested = run_script("run_cifar.py", [*args, "--test_only"])
    out = check_ok(tested)
    results(out)
    assert f"epoch-0002 (latest; {data} has 100 bytes" in tested.stderr
    assert "Using " + os.path.join(str(tmp_path), "checkpoints", "epoch-0001") in tested.stderr

    resumed = run_script("run_cifar.py", args)
    out = check_ok(resumed)
    assert "epoch-0002 (latest;" in resumed.stderr
    assert "epoch-0001 (epoch 1, step 2)" in out and "Finished epoch # 2" in out
    assert checkpoints.verify(second) is None  # saved again over the damaged one
    assert checkpoints.find_checkpoint(str(tmp_path)) == second
