"""Interrupted runs: SIGKILL mid-epoch then rerun (bit-identical in --deterministic mode, with
the original recipe and with every large-batch option on), SIGTERM (checkpoint and clean exit),
NaN loss (clear stop, last good checkpoint kept), --ema_decay on a checkpoint without an EMA
(refused in one line)."""

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from train_helpers import REPO, TINY_MODEL, check_ok, csv_rows, digest, run_script, script_env

from resnext_tf import checkpoints
from resnext_tf.training import EXIT_NON_FINITE_LOSS, lock

pytestmark = pytest.mark.slow

# Two epochs of 10 steps, a checkpoint every 3 steps, one log line per step.
ARGS = [*TINY_MODEL, "--batch_size=32", "--epochs=2", "--checkpoint_steps=3", "--log_steps=1"]
# Every option of large-batch recipes; the kill at step 6 falls inside the 15-step warmup.
ALL_OPTIONS = [
    "--lr_schedule=cosine",
    "--warmup_epochs=1.5",
    "--label_smoothing=0.1",
    "--no_weight_decay_on=bn,bias",
    "--ema_decay=0.9",
]


def start(args):
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, "run_cifar.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=script_env(),
        cwd=REPO,
    )


def wait_for(proc, pattern):
    """Reads the process output until a line matches; returns the lines read."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if re.search(pattern, line):
            return lines
    proc.wait()
    raise AssertionError(f"{pattern!r} never printed (exit {proc.returncode}):\n{''.join(lines)}")


def checkpoint_values(path):
    reader = tf.train.load_checkpoint(os.path.join(path, checkpoints.PREFIX))
    names = sorted(n for n in reader.get_variable_to_shape_map() if "OBJECT_GRAPH" not in n)
    return {n: reader.get_tensor(n) for n in names}


@pytest.mark.parametrize("options", [[], ALL_OPTIONS], ids=["original", "all_options"])
def test_sigkill_mid_epoch_then_rerun_is_bit_identical(cifar_dir, tmp_path, options):
    args = [*ARGS, *options, f"--data_dir={cifar_dir}", "--deterministic"]
    whole, resumed = str(tmp_path / "whole"), str(tmp_path / "resumed")
    reference = check_ok(run_script("run_cifar.py", [*args, f"--model_dir={whole}"]))

    proc = start([*args, f"--model_dir={resumed}"])
    wait_for(proc, r"Saved checkpoint .*step-000000006")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert checkpoints.find_checkpoint(resumed).endswith("step-000000006")

    out = check_ok(run_script("run_cifar.py", [*args, f"--model_dir={resumed}"]))
    assert "step-000000006 (epoch 1, step 6)" in out
    assert digest(out) == digest(reference)
    final = [os.path.join(d, "checkpoints", "epoch-0002") for d in (whole, resumed)]
    a, b = (checkpoint_values(path) for path in final)
    assert a.keys() == b.keys() and len(a) > 20  # model and optimizer variables
    assert any(name.startswith("ema/") for name in a) == bool(options)  # the weight EMA
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert csv_rows(whole) == [
        {**row, "epoch_seconds": r["epoch_seconds"], "images_per_second": r["images_per_second"]}
        for row, r in zip(csv_rows(resumed), csv_rows(whole), strict=True)
    ]
    assert ("val_ema_top1" in csv_rows(whole)[-1]) == bool(options)


def test_sigterm_saves_and_exits_cleanly(cifar_dir, tmp_path):
    proc = start([*ARGS, f"--data_dir={cifar_dir}", f"--model_dir={tmp_path}"])
    wait_for(proc, r"Epoch: \[1\]\[2/10\]")
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait() == 0, rest
    assert "Preempted" in rest
    state = checkpoints.read_state(checkpoints.find_checkpoint(str(tmp_path)))
    assert state["epoch"] == 1 and not state["epoch_complete"] and 2 <= state["step"] < 10


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(cifar_dir, tmp_path):
    args = [*ARGS, f"--data_dir={cifar_dir}", f"--model_dir={tmp_path}", "--lr=1e30"]
    proc = run_script("run_cifar.py", [*args, "--checkpoint_steps=1"])
    assert proc.returncode == EXIT_NON_FINITE_LOSS, proc.stdout + proc.stderr[-3000:]
    match = re.search(
        r"Loss is (nan|inf) at epoch 1, step (\d+) \(global step (\d+)\)", proc.stdout
    )
    assert match, proc.stdout
    step = int(match.group(2))
    latest = checkpoints.find_checkpoint(str(tmp_path))
    assert f"last good checkpoint is {latest}" in proc.stdout
    assert checkpoints.read_state(latest)["global_step"] == step - 1
    assert all(np.isfinite(v).all() for v in checkpoint_values(latest).values())
    assert not os.path.exists(os.path.join(tmp_path, lock.LOCK_FILE))  # released on error


def test_ema_cannot_continue_a_checkpoint_without_one(cifar_dir, tmp_path):
    args = [*ARGS, f"--data_dir={cifar_dir}", f"--model_dir={tmp_path}", "--train_steps=3"]
    check_ok(run_script("run_cifar.py", args))
    proc = run_script("run_cifar.py", [*args, "--ema_decay=0.9"])
    assert proc.returncode == 2, proc.stdout + proc.stderr[-3000:]
    assert "holds no weight EMA, so ema_decay=0.9 cannot continue it" in proc.stderr
