"""tf.distribute: strategy selection, MirroredStrategy over two logical CPUs against one device,
and MultiWorkerMirroredStrategy with two worker processes on localhost: a full run, SIGTERM to
one worker, SIGKILL to one (the other stops within --worker_timeout; a relaunch resumes), workers
given different model_dirs, a worker that never starts."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types

import pytest
from train_helpers import REPO, TINY_MODEL, check_ok, digest, script_env

from resnext_tf import checkpoints
from resnext_tf.errors import EXIT_USER_ERROR, EXIT_WORKER_LOST
from resnext_tf.training import TrainConfig, cluster, distribute, resume

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
# A short bound for a lost or missing worker, to keep the failure tests fast.
WORKER_TIMEOUT = 12
# What TensorFlow's coordination service logs when a task leaves the others without a word.
CRASH_LOGS = ("have crashed", "unhealthy", "CoordinationServiceError")


def start_workers(tmp_path, args, model_dirs=None, tag="", indices=(0, 1)):
    """Starts the `indices` of two run_cifar.py workers on localhost.

    Worker i writes to model_dirs[i] (default tmp_path/worker{i}) and its stderr to
    tmp_path/{tag}worker{i}.err. Returns ({index: Popen}, the two addresses).
    """
    workers = [f"localhost:{port}" for port in free_ports(2)]
    model_dirs = model_dirs or [tmp_path / f"worker{index}" for index in range(2)]
    procs = {}
    for index in indices:
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        command = [sys.executable, os.path.join(REPO, "run_cifar.py"), *MULTI_WORKER, *args]
        with open(tmp_path / f"{tag}worker{index}.err", "w") as stderr:
            procs[index] = subprocess.Popen(
                [*command, f"--model_dir={model_dirs[index]}"],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=script_env(TF_CONFIG=json.dumps(tf_config)),
                cwd=REPO,
            )
    return procs, workers


def ended(procs, tmp_path, tag=""):
    """Waits for the workers; returns {index: (exit code, stdout, stderr)}."""
    results = {}
    for index, proc in procs.items():
        stdout, _ = proc.communicate(timeout=300)
        stderr = (tmp_path / f"{tag}worker{index}.err").read_text()
        results[index] = (proc.returncode, stdout, stderr)
    return results


def finish(procs, tmp_path, tag=""):
    """Waits for the workers; returns their outputs after checking the exit codes."""
    return [
        check_ok(types.SimpleNamespace(returncode=code, stdout=stdout, stderr=stderr))
        for code, stdout, stderr in ended(procs, tmp_path, tag).values()
    ]


def error_line(stderr):
    """The one `error:` line of a failed entry point."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-4000:]
    return lines[0]


def wait_for_line(proc, text):
    for line in proc.stdout:
        if text in line:
            return
    raise AssertionError(f"{text!r} never printed (exit {proc.wait()})")


UNINTERRUPTED = ["--epochs=1", "--steps_per_epoch=6", "--checkpoint_steps=2"]


@pytest.fixture(scope="module")
def two_workers(cifar_dir, tmp_path_factory):
    """A finished run of two workers, each given its own model_dir: (folder, args, results)."""
    tmp_path = tmp_path_factory.mktemp("two_workers")
    args = [f"--data_dir={cifar_dir}", *UNINTERRUPTED]
    procs, _ = start_workers(tmp_path, args)
    return tmp_path, args, ended(procs, tmp_path)


@pytest.mark.slow
def test_multi_worker_two_processes(two_workers):
    tmp_path, _, results = two_workers
    outs = [
        check_ok(types.SimpleNamespace(returncode=code, stdout=stdout, stderr=stderr))
        for code, stdout, stderr in results.values()
    ]
    assert digest(outs[0]) == digest(outs[1])
    assert " * Finished epoch # 1  top1:" in outs[1]
    chief = tmp_path / "worker0"
    assert sorted(os.listdir(chief / "checkpoints")) == ["best", "epoch-0001", "latest"]
    assert (chief / "train_log.csv").is_file()
    assert not (tmp_path / "worker1").exists()  # the non-chief saved into a deleted temp dir
    # The workers meet before they exit, so that neither reports the other as crashed.
    for _, _, stderr in results.values():
        assert not any(text in stderr for text in CRASH_LOGS), stderr[-4000:]


@pytest.mark.slow
def test_multi_worker_sigkill_stops_the_other_then_a_relaunch_resumes(
    cifar_dir, tmp_path, two_workers
):
    shared = tmp_path / "run"
    args = [f"--data_dir={cifar_dir}", *UNINTERRUPTED, f"--worker_timeout={WORKER_TIMEOUT}"]
    procs, workers = start_workers(tmp_path, args, model_dirs=[shared] * 2, tag="killed-")
    # Killed after the chief's first checkpoint (step 2, or 4 when the kill comes late).
    wait_for_line(procs[0], "Saved checkpoint")
    procs[1].kill()
    killed = time.monotonic()
    code, _, stderr = ended(procs, tmp_path, tag="killed-")[0]
    seconds = time.monotonic() - killed
    assert code == EXIT_WORKER_LOST, stderr[-4000:]
    assert seconds < WORKER_TIMEOUT, stderr[-4000:]
    line = error_line(stderr)
    assert line.startswith(f"error: Lost worker 1 ({workers[1]}), which ")
    match = re.search(r"the last checkpoint is (\S+/step-00000000([24]))\. ", line)
    assert match, line
    last, step = match.group(1), match.group(2)
    assert checkpoints.find_checkpoint(str(shared)) == last
    assert line.endswith("Rerun the same command on every worker to resume.")

    procs, _ = start_workers(tmp_path, args, model_dirs=[shared] * 2, tag="rerun-")
    outs = finish(procs, tmp_path, tag="rerun-")
    assert all(f"Resuming from {last} (epoch 1, step {step})" in out for out in outs)
    # The same weights as the uninterrupted run (which gave each worker its own model_dir).
    uninterrupted = two_workers[2][0][1]
    assert digest(outs[0]) == digest(outs[1]) == digest(uninterrupted)


@pytest.mark.slow
def test_multi_worker_separate_model_dirs_stop_before_any_step(two_workers):
    # Relaunched with a second epoch, the chief would continue its checkpoint, the other
    # worker (whose model_dir holds none) would start over.
    tmp_path, args, _ = two_workers
    procs, _ = start_workers(tmp_path, [*args, "--epochs=2"], tag="relaunch-")
    for index, (code, stdout, stderr) in ended(procs, tmp_path, tag="relaunch-").items():
        assert code == EXIT_USER_ERROR, stderr[-4000:]
        assert "Epoch: [" not in stdout
        line = error_line(stderr)
        assert (
            f"worker 0 (model_dir='{tmp_path / 'worker0'}') at epoch 1, step 6 (epoch-0001)" in line
        )
        assert (
            f"worker 1 (model_dir='{tmp_path / 'worker1'}') at epoch 1, step 0 (no checkpoint"
            in line
        )
        assert "model_dir must be one folder all workers see" in line, index


@pytest.mark.slow
@pytest.mark.parametrize("missing", [1, 0], ids=["worker1_missing", "leader_missing"])
def test_multi_worker_missing_worker_stops_at_start(cifar_dir, tmp_path, missing):
    args = [f"--data_dir={cifar_dir}", *UNINTERRUPTED, f"--worker_timeout={WORKER_TIMEOUT}"]
    present = 1 - missing
    started = time.monotonic()
    procs, workers = start_workers(
        tmp_path, args, model_dirs=[tmp_path / "run"] * 2, indices=[present]
    )
    code, stdout, stderr = ended(procs, tmp_path)[present]
    assert code == EXIT_WORKER_LOST, stderr[-4000:]
    # The bound counts from the moment the worker looks for the others, after its imports.
    assert time.monotonic() - started < WORKER_TIMEOUT + 60
    line = error_line(stderr)
    assert line.startswith(
        f"error: worker {missing} ({workers[missing]}) did not join the run within "
        f"{WORKER_TIMEOUT} s (--worker_timeout)."
    )
    assert "Rerun the same command on every worker to resume." in line
    assert "Epoch: [" not in stdout


@pytest.mark.slow
def test_multi_worker_sigterm_to_one_worker_stops_both(cifar_dir, tmp_path):
    procs, _ = start_workers(tmp_path, [f"--data_dir={cifar_dir}", "--epochs=3"])
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


def test_worker_lost_error_exits_75_with_one_line():
    # errors.py needs only the standard library: loaded by its path, without TensorFlow.
    script = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('errors', sys.argv[1])\n"
        "errors = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(errors)\n"
        "@errors.user_errors_exit\n"
        "def main():\n"
        "    raise errors.WorkerLostError('Lost worker 1 (h:1), which stopped.')\n"
        "main()\n"
    )
    path = os.path.join(REPO, "resnext_tf", "errors.py")
    proc = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True)
    assert proc.returncode == EXIT_WORKER_LOST == 75
    assert proc.stderr == "error: Lost worker 1 (h:1), which stopped.\n"


def test_worker_timeout_is_a_flag_with_a_bound():
    assert TrainConfig().worker_timeout == 60
    with pytest.raises(ValueError, match="worker_timeout must be >= 1"):
        TrainConfig(worker_timeout=0)


def fake_cluster(me=0, model_dir=None):
    tasks = [cluster.Task("worker", i, f"host{i}:1234") for i in range(3)]
    return cluster.Cluster(tasks, "worker", me, worker_timeout=20, model_dir=model_dir)


def test_reports_name_the_tasks_and_the_last_checkpoint(tmp_path):
    leader = fake_cluster(0, model_dir=str(tmp_path))
    # The register barrier's error, as TensorFlow 2.21 words it.
    error = (
        "Barrier timed out. Id: [Init]Wait_for_all_tasks_to_register::0. # of tasks that "
        "reached the barrier: 2/3.\nThe first task at the barrier: /job:worker/replica:0/task:0. "
        "Some timed out task names:\n/job:worker/replica:0/task:2\n"
    )
    assert leader.not_joined_message(error) == (
        "worker 2 (host2:1234) did not join the run within 20 s (--worker_timeout). This "
        f"worker, worker 0 (host0:1234), stops; there is no checkpoint in model_dir="
        f"'{tmp_path}' yet. Rerun the same command on every worker to resume."
    )
    # A worker that cannot reach the leader names it.
    assert (
        fake_cluster(1)
        .not_joined_message("Deadline Exceeded")
        .startswith("worker 0 (host0:1234) did not join")
    )
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text('{"name": "step-000000012"}')
    lost = leader.lost_message([(leader.tasks[1], "stopped sending heartbeats")])
    last = tmp_path / "checkpoints" / "step-000000012"
    assert lost == (
        "Lost worker 1 (host1:1234), which stopped sending heartbeats. This worker, worker 0 "
        f"(host0:1234), stops; the last checkpoint is {last}. Rerun the same command on every "
        "worker to resume."
    )


def test_start_rows_describe_each_worker(tmp_path):
    source = tmp_path / "run" / "checkpoints" / "step-000000006"
    source.mkdir(parents=True)
    state = {"epoch": 1, "step": 6, "global_step": 6, "epoch_complete": False}
    (source / "state.json").write_text(json.dumps(state))
    me = cluster.Task("worker", 0, "host0:1234")
    resumed = resume.start_row(me, str(tmp_path / "run"), str(source), fresh_epoch=1)
    fresh = resume.start_row(me._replace(index=1), str(tmp_path / "w1"), None, fresh_epoch=1)
    assert resumed.shape == fresh.shape  # one fixed size for the all-gather
    assert resume._describe_row(resumed) == (
        f"worker 0 (model_dir='{tmp_path / 'run'}') at epoch 1, step 6 (step-000000006)"
    )
    assert resume._describe_row(fresh) == (
        f"worker 1 (model_dir='{tmp_path / 'w1'}') at epoch 1, step 0 (no checkpoint: a fresh "
        "start)"
    )
