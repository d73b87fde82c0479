"""Training on whatever CPU the run meets: it says where it computes, trains and exports where
TensorFlow runs without oneDNN, and an export that would fail stops the run before training."""

import os

import pytest
import tensorflow as tf
from train_helpers import TINY_MODEL, check_ok, run_script

from resnext_tf import hardware

pytestmark = pytest.mark.slow

SHORT = [*TINY_MODEL, "--batch_size=32", "--epochs=1", "--train_steps=2", "--log_steps=1"]


def test_without_onednn_trains_split_says_why_and_exports(cifar_dir, tmp_path):
    args = [*SHORT, f"--data_dir={cifar_dir}", f"--model_dir={tmp_path}/run"]
    out = check_ok(
        run_script(
            "run_cifar.py", [*args, f"--export_dir={tmp_path}/export"], TF_ENABLE_ONEDNN_OPTS="0"
        )
    )
    lines = out.splitlines()
    assert f" => CPU: {hardware.cpu_model()} (" in out
    assert any("oneDNN off (TF_ENABLE_ONEDNN_OPTS=0)" in line for line in lines), out
    assert " => conv_impl=auto: split (TensorFlow has no native grouped gradient here" in out
    exported = tmp_path / "export" / "resnext11_2x4d" / "1"
    served = tf.saved_model.load(str(exported)).signatures["serving_default"]
    png = tf.io.encode_png(tf.zeros((32, 32, 3), tf.uint8))
    assert served(image_bytes=tf.stack([png]))["logits"].shape == (1, 10)


def test_an_export_that_would_fail_stops_the_run_before_training(cifar_dir, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    args = [*SHORT, f"--data_dir={cifar_dir}", f"--model_dir={tmp_path}/run"]
    proc = run_script("run_cifar.py", [*args, f"--export_dir={blocker}/export"])
    assert proc.returncode == 2, proc.stdout + proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: The export would fail: export_dir=") and str(blocker) in last
    assert " | Epoch:" not in proc.stdout
    assert not os.path.exists(tmp_path / "run" / "checkpoints" / "epoch-0001")
