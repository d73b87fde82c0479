"""run_imagenet.py end to end on a small folder of PIL-written JPEGs, with --ten_crop."""

import json
import os
import subprocess
import sys

import pytest
from train_helpers import REPO, check_ok, csv_rows, results, run_script, script_env

pytestmark = pytest.mark.slow

# ResNeXt-50 2x4d on 32x32 crops with zero-padding shortcuts: small enough for CPU tests.
ARGS = [
    "--depth=50",
    "--cardinality=2",
    "--base_width=4",
    "--shortcut_type=A",
    "--image_size=32",
    "--batch_size=16",
    "--epochs=1",
    "--log_steps=3",
]


def test_train_then_single_and_ten_crop_evaluation(imagenet_dir, tmp_path):
    args = [*ARGS, f"--data_dir={imagenet_dir}", f"--model_dir={tmp_path}"]
    out = check_ok(run_script("run_imagenet.py", args))
    assert " | Epoch: [1][6/6]" in out  # 96 images / 16
    (row,) = csv_rows(str(tmp_path))
    assert row["lr"] == pytest.approx(0.1 * 16 / 256)
    assert 0.0 <= row["val_top1"] <= 100.0 and row["train_loss"] > 0.0

    single = results(check_ok(run_script("run_imagenet.py", [*args, "--test_only"])))
    assert single[0] == pytest.approx(row["val_top1"], abs=1e-3)
    ten = results(check_ok(run_script("run_imagenet.py", [*args, "--test_only", "--ten_crop"])))
    # 24 validation images: every error is a multiple of 100/24 %.
    assert (ten[0] * 24 / 100) == pytest.approx(round(ten[0] * 24 / 100), abs=1e-3)
    # predict, on the same validation images, finds the same top-1 error with each rule.
    for flags, expected in (([], single[0]), (["--ten_crop"], ten[0])):
        assert predicted_top1_error(tmp_path, imagenet_dir, flags) == pytest.approx(expected)


def predicted_top1_error(model_dir, imagenet_dir, flags):
    """Top-1 error (%) of `python -m resnext_tf.predict --model_dir` on the val/ folders."""
    val = os.path.join(imagenet_dir, "val")
    command = [sys.executable, "-m", "resnext_tf.predict", f"--model_dir={model_dir}", val]
    command += ["--output_format=json", "--top_k=1", *flags]
    proc = subprocess.run(command, capture_output=True, text=True, env=script_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wnids = sorted(os.listdir(val))
    rows = json.loads(proc.stdout)
    wrong = [
        row["predictions"][0]["index"]
        != wnids.index(os.path.basename(os.path.dirname(row["image"])))
        for row in rows
    ]
    assert len(rows) == 24
    return 100.0 * sum(wrong) / len(rows)
