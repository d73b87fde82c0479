"""run_cifar.py end to end on a small color-coded CIFAR-10: learning, logs, mid-epoch resume,
--test_only and --retrain."""

import glob
import os
import shutil

import pytest
from train_helpers import TINY_MODEL, check_ok, csv_rows, results, run_script

from resnext_tf import checkpoints

pytestmark = pytest.mark.slow

# 320 training images / batch 32 = 10 steps per epoch; LR 0.1 * 32 / 128 = 0.025.
TRAIN = [*TINY_MODEL, "--batch_size=32", "--epochs=3", "--log_steps=5"]


@pytest.fixture(scope="module")
def cifar_run(cifar_dir, tmp_path_factory):
    """Two and a half epochs: --train_steps=25 stops after step 5 of epoch 3."""
    model_dir = str(tmp_path_factory.mktemp("cifar_run") / "run")
    args = [*TRAIN, f"--data_dir={cifar_dir}", f"--model_dir={model_dir}", "--train_steps=25"]
    return model_dir, check_ok(run_script("run_cifar.py", args))


def test_learns_and_writes_logs_and_checkpoints(cifar_run):
    model_dir, out = cifar_run
    rows = csv_rows(model_dir)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["val_top1"] < 50.0  # chance is 90% error
    # Error, not loss: in 20 steps a few confident mistakes can raise the mean loss of an epoch
    # whose error fell (fp32 rounding alone moves this run's loss by 1e-2 from step 4 on).
    assert rows[1]["train_top1"] < rows[0]["train_top1"] - 10.0
    assert [r["lr"] for r in rows] == pytest.approx([0.025, 0.0025])  # x0.1 at epoch/3 > 0.49
    assert " | Epoch: [1][5/10]" in out and " * Finished epoch # 2  top1:" in out
    assert len(glob.glob(os.path.join(model_dir, "tensorboard", "*", "events.out.tfevents.*"))) == 2
    manager_dir = os.path.join(model_dir, "checkpoints")
    assert checkpoints.find_checkpoint(model_dir) == os.path.join(manager_dir, "step-000000025")
    state = checkpoints.read_state(os.path.join(manager_dir, "step-000000025"))
    assert (state["epoch"], state["step"], state["epoch_complete"]) == (3, 5, False)
    assert os.path.isdir(os.path.join(manager_dir, "epoch-0002"))


def test_rerun_continues_mid_epoch_and_test_only_reproduces_val(cifar_run, cifar_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    shutil.copytree(cifar_run[0], model_dir)
    args = [*TRAIN, f"--data_dir={cifar_dir}", f"--model_dir={model_dir}"]
    out = check_ok(run_script("run_cifar.py", args))
    assert "step-000000025 (epoch 3, step 5)" in out
    assert " | Epoch: [3][10/10]" in out
    assert " | Epoch: [3][5/10]" not in out and " | Epoch: [1]" not in out
    rows = csv_rows(model_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[2]["lr"] == pytest.approx(0.00025)

    out = check_ok(run_script("run_cifar.py", [*args, "--test_only"]))
    assert results(out)[0] == pytest.approx(rows[2]["val_top1"], abs=1e-3)


def test_retrain_loads_weights_only(cifar_run, cifar_dir, tmp_path):
    source = os.path.join(cifar_run[0], "checkpoints", "epoch-0002")
    base = [*TRAIN, f"--data_dir={cifar_dir}", f"--retrain={source}"]
    out = check_ok(run_script("run_cifar.py", [*base, f"--model_dir={tmp_path}/a", "--test_only"]))
    assert results(out)[0] == pytest.approx(csv_rows(cifar_run[0])[1]["val_top1"], abs=1e-3)

    args = [*base, f"--model_dir={tmp_path}/b", "--train_steps=2", "--log_steps=1"]
    out = check_ok(run_script("run_cifar.py", [*args, f"--export_dir={tmp_path}/export"]))
    assert "Loading weights" in out and "Resuming" not in out
    assert (tmp_path / "export" / "resnext11_2x4d" / "1" / "saved_model.pb").is_file()
    # A fresh run (epoch 1, fresh optimizer) that starts from the trained weights.
    first = next(line for line in out.splitlines() if line.startswith(" | Epoch: [1][1/10]"))
    assert float(first.split("top1")[1].split()[0]) < 50.0
    assert "LR 0.025" in first
