"""run_imagenet.py end to end on a small folder of PIL-written JPEGs, with --ten_crop."""

import pytest
from train_helpers import check_ok, csv_rows, results, run_script

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
