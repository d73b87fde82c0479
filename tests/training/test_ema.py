"""The weight EMA's decay warmup, min(decay, (1 + s) / (10 + s)), its flags, the log lines that
name the weights standing for a run, and a short run whose EMA needs the warmup."""

import io
import os
import pickle
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from train_helpers import (
    REPO,
    TINY_MODEL,
    check_ok,
    csv_rows,
    results,
    run_script,
    script_env,
    write_cifar10,
)

from resnext_tf.training import TrainConfig, metrics
from resnext_tf.training.ema import WeightEMA, warmed_up_decay
from resnext_tf.training.trainer import Trainer

# --------------------------------------------------------------------------- the schedule


@pytest.mark.parametrize(
    "step, want",
    [(0, 1 / 10), (1, 2 / 11), (10, 11 / 20), (100, 101 / 110), (890, 0.99), (10**6, 0.99)],
)
def test_warmed_up_decay(step, want):
    assert warmed_up_decay(0.99, step) == pytest.approx(want, rel=1e-15)
    assert warmed_up_decay(0.99, step, warmup=False) == 0.99


def test_warmup_reaches_the_decay_at_step_10d_minus_1_over_1_minus_d():
    for decay, first in ((0.99, 890), (0.9999, 89990)):
        assert warmed_up_decay(decay, first - 1) < decay
        assert warmed_up_decay(decay, first) == pytest.approx(decay, rel=1e-15)
        assert warmed_up_decay(decay, 10 * first) == decay


def two_models():
    models = [keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]) for _ in range(2)]
    models[0].set_weights([np.ones((2, 2), np.float32), np.zeros(2, np.float32)])
    return models


@pytest.mark.parametrize("step", [0, 1, 10, 10**6])
def test_in_graph_decay_matches_the_python_schedule(step):
    models = two_models()
    warm = WeightEMA(*models, decay=0.99, warmup=True)
    steps = tf.Variable(step, dtype=tf.int64)  # as optimizer.iterations
    got = float(tf.function(warm.decay_at)(steps))
    assert got == pytest.approx(warmed_up_decay(0.99, step), rel=1e-6)
    assert WeightEMA(*models, decay=0.99).decay_at(steps) == 0.99  # warmup off: constant


def test_update_uses_the_decay_of_the_step_and_warmup_off_the_constant():
    for warmup, want in ((True, 2 / 11), (False, 0.99)):
        models = two_models()
        average = WeightEMA(*models, decay=0.99, warmup=warmup)
        old = models[1].get_weights()
        models[0].set_weights([np.full((2, 2), 3.0, np.float32), np.ones(2, np.float32)])
        average.update(step=1)
        for got, a, w in zip(models[1].get_weights(), old, models[0].get_weights(), strict=True):
            np.testing.assert_allclose(got, want * a + (1 - want) * w, rtol=1e-6)
    with pytest.raises(ValueError, match="needs the optimizer's step; received step=None"):
        WeightEMA(*two_models(), decay=0.99, warmup=True).update()


# ------------------------------------------------------------------------ flags and lines


def test_warmup_is_on_and_the_ema_stands_for_the_run_by_default():
    config = TrainConfig(dataset="cifar10", ema_decay=0.99)
    assert (config.ema_warmup, config.export_weights) == (True, "ema")
    with pytest.raises(ValueError, match=r"received export_weights='best'"):
        TrainConfig(dataset="cifar10", export_weights="best")


def fake_trainer(export_weights="ema", test_only=False, retrain=None, ema=True):
    """What Trainer's result properties read, without data or models."""
    config = types.SimpleNamespace(
        export_weights=export_weights, test_only=test_only, retrain=retrain
    )
    return types.SimpleNamespace(config=config, ema=object() if ema else None)


@pytest.mark.parametrize(
    "kwargs, want",
    [
        ({}, True),
        ({"export_weights": "raw"}, False),
        ({"ema": False}, False),
        ({"test_only": True, "retrain": "weights.h5"}, False),  # a weights file has no EMA
        ({"retrain": "weights.h5"}, True),  # trained on from those weights: the EMA is real
    ],
)
def test_result_is_ema(kwargs, want):
    assert Trainer.result_is_ema.fget(fake_trainer(**kwargs)) is want


def errors(top1):
    return metrics.Errors(loss=1.0, top1=top1, top5=0.0, count=100)


def test_one_line_when_the_ema_validates_worse(capsys):
    line = (
        " * The weight EMA validates worse than the raw weights (top1 error 78.000 vs 0.000): "
        "--export_weights=raw exports the raw weights (with --test_only --export_dir, from this "
        "run's checkpoint)\n"
    )
    worse, same = (errors(0.0), errors(78.0)), (errors(3.0), errors(3.0))
    cases = [((True,), worse, line), ((True,), same, ""), ((False,), worse, "")]
    for (is_ema,), (raw, averaged), want in cases:
        Trainer._say_if_ema_worse(types.SimpleNamespace(result_is_ema=is_ema), raw, averaged)
        assert capsys.readouterr().out == want


# ----------------------------------------------------------------------------- end to end

# 310 training images / batch 10 = 31 steps an epoch, 248 in 8 epochs; LR 0.1 * 10 / 128.
SHORT_RUN = [
    *TINY_MODEL,
    "--batch_size=10",
    "--epochs=8",
    "--warmup_epochs=1",
    "--lr_schedule=cosine",
    "--label_smoothing=0.1",
    "--no_weight_decay_on=bn,bias",
    "--ema_decay=0.99",
    "--log_steps=31",
]
WORSE = " * The weight EMA validates worse than the raw weights"


@pytest.fixture(scope="module")
def noisy_cifar_dir(tmp_path_factory):
    """CIFAR-10 python version, 5 x 62 training and 100 test images with noise of amplitude
    200 around the class colors: the raw model still reaches 0% error in 248 steps, while the
    average needs them all."""
    folder = str(tmp_path_factory.mktemp("noisy") / "cifar10-noisy")
    write_cifar10(folder, np.random.default_rng(0), train_per_batch=62, noise=200.0)
    return folder


def run_together(tmp_path, *arg_lists, timeout=600):
    """Runs run_cifar.py with each argument list at once (the tiny model's small steps leave CPU
    time over) and returns their outputs, checked as check_ok does."""
    logs = [(tmp_path / f"run{i}.out", tmp_path / f"run{i}.err") for i in range(len(arg_lists))]
    procs = []
    for args, (out, err) in zip(arg_lists, logs, strict=True):
        command = [sys.executable, os.path.join(REPO, "run_cifar.py"), *args]
        with open(out, "w") as stdout, open(err, "w") as stderr:
            procs.append(
                subprocess.Popen(command, stdout=stdout, stderr=stderr, env=script_env(), cwd=REPO)
            )
    outputs = []
    for proc, (out, err) in zip(procs, logs, strict=True):
        proc.wait(timeout=timeout)
        done = subprocess.CompletedProcess(
            proc.args, proc.returncode, out.read_text(), err.read_text()
        )
        outputs.append(check_ok(done))
    return outputs


def served_top1_error(export_dir, data_dir):
    """Top-1 error (%) of the exported SavedModel on the test batch, sent as PNG files."""
    (version,) = os.listdir(os.path.join(export_dir, "resnext11_2x4d"))
    path = os.path.join(export_dir, "resnext11_2x4d", version)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    with open(os.path.join(data_dir, "test_batch"), "rb") as f:
        batch = pickle.load(f)
    images = batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    files = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    classes = serve(image_bytes=tf.constant(files))["classes"].numpy()[:, 0]
    return 100.0 * float(np.mean(classes != np.asarray(batch[b"labels"])))


@pytest.mark.slow
def test_short_run_ema_tracks_the_raw_weights_only_with_the_warmup(noisy_cifar_dir, tmp_path):
    base = [*SHORT_RUN, f"--data_dir={noisy_cifar_dir}"]
    warm_dir, cold_dir = str(tmp_path / "warm"), str(tmp_path / "cold")
    export_warm = str(tmp_path / "export_warm")
    # The same run with a constant decay (cold) alongside: small steps leave CPU time over.
    out, cold_out = run_together(
        tmp_path,
        [*base, f"--model_dir={warm_dir}", f"--export_dir={export_warm}"],
        [*base, f"--model_dir={cold_dir}", "--noema_warmup"],
    )
    assert " => Weight EMA, decay 0.99, warmup min(0.99, (1 + step) / (10 + step)): " in out
    assert "best checkpoint and export use the EMA weights (--export_weights=raw" in out
    assert " => Exported SavedModel of the EMA weights to " in out
    warm = csv_rows(warm_dir)[-1]
    assert warm["epoch"] == 8
    assert abs(warm["val_ema_top1"] - warm["val_top1"]) <= 2.0, warm
    assert WORSE not in out
    assert served_top1_error(export_warm, noisy_cifar_dir) == pytest.approx(warm["val_ema_top1"])

    # The constant decay keeps 0.99**248 = 8% of the initial weights and far more of the first
    # epochs': its EMA lags (measured: 17% error against the raw 0%).
    out = cold_out
    assert " => Weight EMA, decay 0.99, no warmup: " in out
    cold = csv_rows(cold_dir)[-1]
    assert cold["epoch"] == 8
    assert cold["val_ema_top1"] > cold["val_top1"] + 2.0, cold
    (line,) = [line for line in out.splitlines() if line.startswith(WORSE)]
    assert f"(top1 error {cold['val_ema_top1']:.3f} vs {cold['val_top1']:.3f})" in line
    assert "--export_weights=raw exports the raw weights" in line

    # The flag the line names: evaluate the finished run again and export its raw weights.
    export_raw = str(tmp_path / "export_raw")
    test_args = [f"--model_dir={cold_dir}", "--test_only", "--export_weights=raw"]
    out = check_ok(run_script("run_cifar.py", [*base, *test_args, f"--export_dir={export_raw}"]))
    assert (
        " => Testing the raw weights (' * Results') and the weight EMA (' * Results EMA'); " in out
    )
    assert "export: the raw weights" in out
    assert results(out)[0] == pytest.approx(cold["val_top1"], abs=1e-3)
    assert f" * Results EMA top1: {cold['val_ema_top1']:6.3f}" in out
    assert WORSE not in out  # the EMA no longer stands for the run
    assert " => Exported SavedModel of the raw weights to " in out
    assert served_top1_error(export_raw, noisy_cifar_dir) == pytest.approx(cold["val_top1"])
