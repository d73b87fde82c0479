"""tf.distribute: strategy selection, MirroredStrategy over two logical CPUs against one device,
and MultiWorkerMirroredStrategy with two worker processes on localhost."""

import json
import os
import signal
import socket
import subprocess
import sys
import types

import pytest
from train_helpers import REPO, TINY_MODEL, check_ok, digest, script_env

from resnext_tf import checkpoints
from resnext_tf.training import distribute

# Two steps on one device and on two mirrored replicas (sync BN, weight EMA with its decay
# warmup), from the same weights and the same global batch, split in halves for the replicas.
MIRRORED_SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
from resnext_tf.training import TrainConfig, distribute
from resnext_tf.training.trainer import Trainer

tmp, data_dir = sys.argv[1:]
config = dict(dataset="cifar10", data_dir=data_dir, depth=11, cardinality=2, base_width=4,
              shortcut_type="A", batch_size=16, sync_bn=True, ema_decay=0.5)
single = Trainer(TrainConfig(**config, model_dir=tmp + "/single"),
                 tf.distribute.OneDeviceStrategy("/cpu:0"))
mirrored = Trainer(TrainConfig(**config, model_dir=tmp + "/mirrored"),
                   distribute.build_strategy("mirrored"))
initial = single.model.get_weights()
mirrored.model.set_weights(initial)
mirrored.ema.reset()
rng = np.random.default_rng(0)
images = rng.normal(size=(16, 32, 32, 3)).astype(np.float32)
labels = rng.integers(0, 10, 16).astype(np.int32)

def halves(ctx):
    i = ctx.replica_id_in_sync_group
    return images[8 * i : 8 * i + 8], labels[8 * i : 8 * i + 8]

trajectory = [initial]
for _ in range(2):
    a = single._train_step((tf.constant(images), tf.constant(labels))).numpy()
    b = mirrored._train_step(
        mirrored.strategy.experimental_distribute_values_from_function(halves)).numpy()
    trajectory.append(single.model.get_weights())

def relative_diff(after):
    # Disagreement relative to the size of the update, over all variables (per-variable ratios
    # are noisy for BatchNorm betas, whose gradients are sums with heavy cancellation). Without
    # sync BN the ratio is ~3e-2; with it, float32 rounding gives ~1e-5.
    num = sum(float(np.sum((x - y) ** 2)) for x, y in zip(*after))
    den = sum(float(np.sum((x - w) ** 2)) for x, w in zip(after[0], initial))
    return (num / den) ** 0.5

raw = [single.model.get_weights(), mirrored.model.get_weights()]
ema = [single.ema.average.get_weights(), mirrored.ema.average.get_weights()]
# The average after two steps, with the warmed-up decays min(0.5, (1 + s) / (10 + s)) of steps
# 1 and 2 (2/11, then 3/12): not the raw weights. Each replica read the step count after the
# optimizer's update, as one device does.
d1, d2 = 2 / 11, 3 / 12
hand = [d2 * (d1 * w0 + (1 - d1) * w1) + (1 - d2) * w2 for w0, w1, w2 in zip(*trajectory)]
ema_vs_raw = relative_diff([raw[0], ema[0]])
print(json.dumps({"replicas": mirrored.strategy.num_replicas_in_sync, "diff": relative_diff(raw),
                  "ema_diff": relative_diff(ema), "ema_vs_raw": ema_vs_raw,
                  "ema_vs_hand": [relative_diff([hand, e]) for e in ema],
                  "steps": [int(t.optimizer.iterations.numpy()) for t in (single, mirrored)],
                  "stats": [a.tolist(), b.tolist()]}))
"""


@pytest.mark.slow
def test_mirrored_two_cpus_matches_one_device(cifar_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path), cifar_dir],
        capture_output=True,
        text=True,
        timeout=240,
        env=script_env(),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["diff"] < 1e-4
    # The replicas' averages agree as closely as their weights, and the average is not the
    # raw model.
    assert result["ema_diff"] < 1e-4
    assert result["ema_vs_raw"] > 0.1
    assert result["steps"] == [2, 2]
    assert max(result["ema_vs_hand"]) < 1e-4
    single, mirrored = result["stats"]
    assert mirrored == pytest.approx(single, rel=1e-5)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


# Sync BN: without it every worker keeps its own BatchNorm moving statistics (as the original's
# GPUs do) and only the trainable weights would agree.
MULTI_WORKER = [*TINY_MODEL, "--batch_size=32", "--sync_bn", "--log_steps=2"]


def start_workers(tmp_path, args):
    """Starts two run_cifar.py workers on localhost; worker i writes to tmp_path/worker{i}."""
    workers = [f"localhost:{port}" for port in free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        command = [sys.executable, os.path.join(REPO, "run_cifar.py"), *MULTI_WORKER, *args]
        with open(tmp_path / f"worker{index}.err", "w") as stderr:
            procs.append(
                subprocess.Popen(
                    [*command, f"--model_dir={tmp_path}/worker{index}"],
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                    env=script_env(TF_CONFIG=json.dumps(tf_config)),
                    cwd=REPO,
                )
            )
    return procs


def finish(procs, tmp_path):
    """Waits for the workers; returns their outputs after checking the exit codes."""
    outs = []
    for index, proc in enumerate(procs):
        stdout, _ = proc.communicate(timeout=300)
        stderr = (tmp_path / f"worker{index}.err").read_text()
        outs.append(
            check_ok(
                types.SimpleNamespace(returncode=proc.returncode, stdout=stdout, stderr=stderr)
            )
        )
    return outs


@pytest.mark.slow
def test_multi_worker_two_processes(cifar_dir, tmp_path):
    args = [f"--data_dir={cifar_dir}", "--epochs=1", "--steps_per_epoch=4", "--checkpoint_steps=2"]
    outs = finish(start_workers(tmp_path, args), tmp_path)
    assert digest(outs[0]) == digest(outs[1])
    assert " * Finished epoch # 1  top1:" in outs[1]
    chief = tmp_path / "worker0"
    assert sorted(os.listdir(chief / "checkpoints")) == ["best", "epoch-0001", "latest"]
    assert (chief / "train_log.csv").is_file()
    assert not (tmp_path / "worker1").exists()  # the non-chief saved into a deleted temp dir


@pytest.mark.slow
def test_multi_worker_sigterm_to_one_worker_stops_both(cifar_dir, tmp_path):
    procs = start_workers(tmp_path, [f"--data_dir={cifar_dir}", "--epochs=3"])
    for line in procs[1].stdout:
        if "Epoch: [1][4/10]" in line:
            break
    procs[1].send_signal(signal.SIGTERM)  # only the non-chief is preempted
    outs = finish(procs, tmp_path)
    assert all("Preempted" in out for out in outs)
    assert digest(outs[0]) == digest(outs[1])
    state = checkpoints.read_state(checkpoints.find_checkpoint(str(tmp_path / "worker0")))
    assert state["epoch"] == 1 and state["step"] in (6, 8)  # the next logging step(s)


def test_auto_strategy_follows_tf_config(monkeypatch):
    cluster = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    assert distribute.resolve_strategy_name("auto") == "multi_worker_mirrored"
    monkeypatch.delenv("TF_CONFIG")
    assert distribute.resolve_strategy_name("auto") == "one_device"  # no GPU on the test machine
    assert distribute.resolve_strategy_name("mirrored") == "mirrored"
    with pytest.raises(ValueError, match="distribution_strategy='ps'"):
        distribute.resolve_strategy_name("ps")


def test_batch_must_split_over_replicas():
    strategy = types.SimpleNamespace(num_replicas_in_sync=8)
    distribute.check_batch_size(256, strategy)
    with pytest.raises(ValueError, match="batch_size=100 with 8 replicas"):
        distribute.check_batch_size(100, strategy)


def test_tpu_needs_an_address():
    with pytest.raises(ValueError, match="tpu=None"):
        distribute.build_strategy("tpu")
