"""Helpers of the training tests: color-coded images, a runner for the entry points (run in
subprocesses, as users run them) and parsers of their output."""

import os
import pickle
import re
import subprocess
import sys

import numpy as np
from data.image_samples import COLOURS
from PIL import Image

from resnext_tf.training import run_log

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A tiny CIFAR ResNeXt (depth 11 = one block per stage, 2x4d, zero-padding shortcuts) that
# trains at a few steps per second on two CPU cores.
TINY_MODEL = ["--depth=11", "--cardinality=2", "--base_width=4", "--shortcut_type=A"]

NOISE = 40.0  # per-pixel uniform noise amplitude, so that the images of a class differ


def color_images(labels, size, rng, noise=NOISE):
    """uint8 [n, size, size, 3] images: the class color plus uniform noise of amplitude
    `noise`."""
    base = COLOURS[labels][:, None, None, :]
    noise = rng.uniform(-noise, noise, size=(len(labels), size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _cifar_batch(labels, rng, noise):
    images = color_images(labels, 32, rng, noise)
    # Official layout: 1024 R, then 1024 G, then 1024 B values per row (docs/reference.md).
    data = images.transpose(0, 3, 1, 2).reshape(len(labels), 3 * 32 * 32)
    return {b"data": data, b"labels": [int(v) for v in labels]}


def write_cifar10(folder, rng, train_per_batch=64, num_test=100, noise=NOISE):
    """Writes the five training batches and the test batch of the CIFAR-10 python version."""
    os.makedirs(folder, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        count = num_test if name == "test_batch" else train_per_batch
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(_cifar_batch(rng.integers(0, 10, count), rng, noise), f)


def write_imagenet(root, rng, num_classes=4, train_per_class=24, val_per_class=6, size=40):
    """Writes train/<wnid>/*.JPEG and val/<wnid>/*.JPEG color images with PIL."""
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label in range(num_classes):
            folder = os.path.join(root, split, f"n{label:08d}")
            os.makedirs(folder)
            for i, image in enumerate(color_images(np.full(count, label), size, rng)):
                Image.fromarray(image).save(os.path.join(folder, f"img_{i}.JPEG"), quality=90)


def script_env(**extra):
    """Environment of a subprocess run of the entry points (quiet TensorFlow, repo importable)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


def run_script(script, args, timeout=240, **env):
    """Runs run_cifar.py / run_imagenet.py and returns the CompletedProcess (text output)."""
    return subprocess.run(
        [sys.executable, os.path.join(REPO, script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=script_env(**env),
        cwd=REPO,
    )


def check_ok(proc):
    """Asserts a zero exit code, showing the output of a failed run."""
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


def results(stdout):
    """(top1, top5) of the ' * Results top1: X  top5: Y' line of --test_only."""
    match = re.search(r" \* Results top1:\s*([\d.]+)\s+top5:\s*([\d.]+)", stdout)
    assert match, stdout
    return float(match.group(1)), float(match.group(2))


def digest(stdout):
    """The ' * Weights sha256: ...' printed at the end of training."""
    match = re.search(r" \* Weights sha256: ([0-9a-f]{64})", stdout)
    assert match, stdout
    return match.group(1)


def csv_rows(model_dir):
    """Rows of the run's train_log.csv."""
    return run_log.read_csv(os.path.join(model_dir, run_log.CSV_FILE))
