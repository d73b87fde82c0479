"""Atomic checkpoints: round trip, pointers, retention, crashes in the middle of a save."""

import os

import keras
import numpy as np
import pytest

from resnext_tf.training import checkpoint
from resnext_tf.training.optimizer import TorchSGD


def make_objects(seed):
    """A small model with BatchNorm and a TorchSGD that has taken one step (velocities != 0)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, name="dense")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x, training=True)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    optimizer = TorchSGD(0.1, weight_decay=1e-4)
    grads = [keras.ops.ones_like(v) * (i + 1) for i, v in enumerate(model.trainable_variables)]
    optimizer.apply(grads, model.trainable_variables)
    return {"model": model, "optimizer": optimizer}


def values(objects):
    return [keras.ops.convert_to_numpy(v) for v in objects["model"].weights] + [
        keras.ops.convert_to_numpy(v) for v in objects["optimizer"].variables
    ]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_round_trip_restores_model_optimizer_and_state(tmp_path):
    saved = make_objects(seed=1)
    manager = checkpoint.CheckpointManager(str(tmp_path), saved)
    path = manager.save(checkpoint.step_name(7), {"epoch": 2, "step": 3})
    assert path == str(tmp_path / "checkpoints" / "step-000000007")
    assert manager.latest() == path

    fresh = make_objects(seed=2)
    assert not np.array_equal(values(fresh)[0], values(saved)[0])
    state = checkpoint.CheckpointManager(str(tmp_path), fresh).restore(path)
    assert state == {"epoch": 2, "step": 3}
    assert_same(values(fresh), values(saved))


def test_find_checkpoint_accepts_run_dir_subdir_and_checkpoint(tmp_path):
    manager = checkpoint.CheckpointManager(str(tmp_path), make_objects(seed=1))
    path = manager.save(checkpoint.epoch_name(1), {})
    for where in (tmp_path, tmp_path / "checkpoints", path, tmp_path / "checkpoints" / "latest"):
        assert checkpoint.find_checkpoint(str(where)) == path
    assert checkpoint.find_checkpoint(str(tmp_path / "elsewhere")) is None


def test_retention_keeps_latest_best_and_newest_epochs(tmp_path):
    manager = checkpoint.CheckpointManager(str(tmp_path), make_objects(seed=1), keep=2)
    manager.save(checkpoint.epoch_name(1), {}, is_best=True)
    manager.save(checkpoint.step_name(15), {})
    for epoch in (2, 3, 4):
        manager.save(checkpoint.epoch_name(epoch), {})
    names = sorted(n for n in os.listdir(manager.directory) if n[0] != ".")
    assert names == ["best", "epoch-0001", "epoch-0003", "epoch-0004", "latest"]
    assert manager.best().endswith("epoch-0001")
    assert manager.latest().endswith("epoch-0004")


def test_crash_while_writing_leaves_latest_loadable(tmp_path, monkeypatch):
    objects = make_objects(seed=1)
    manager = checkpoint.CheckpointManager(str(tmp_path), objects)
    first = manager.save(checkpoint.epoch_name(1), {"epoch": 1})
    expected = values(objects)
    objects["optimizer"].apply(
        [keras.ops.ones_like(v) for v in objects["model"].trainable_variables],
        objects["model"].trainable_variables,
    )

    def crash(directory):
        raise OSError("disk gone while flushing")

    monkeypatch.setattr(checkpoint, "_fsync_tree", crash)
    with pytest.raises(OSError, match="disk gone"):
        manager.save(checkpoint.epoch_name(2), {"epoch": 2})
    monkeypatch.undo()
    assert os.path.isdir(os.path.join(manager.directory, ".tmp-epoch-0002"))

    restarted = make_objects(seed=3)
    manager = checkpoint.CheckpointManager(str(tmp_path), restarted)
    assert not any(n.startswith(".tmp") for n in os.listdir(manager.directory))
    assert manager.latest() == first
    assert manager.restore(manager.latest()) == {"epoch": 1}
    assert_same(values(restarted), expected)


def test_crash_before_the_pointer_moves(tmp_path, monkeypatch):
    manager = checkpoint.CheckpointManager(str(tmp_path), make_objects(seed=1))
    first = manager.save(checkpoint.epoch_name(1), {"epoch": 1})

    def crash(path, obj):
        raise OSError("killed before the pointer was replaced")

    monkeypatch.setattr(checkpoint, "_write_json_atomic", crash)
    with pytest.raises(OSError):
        manager.save(checkpoint.epoch_name(2), {"epoch": 2})
    monkeypatch.undo()
    assert manager.latest() == first  # the complete epoch-0002 is not named yet
    # The restarted run reaches the same position again and saves it under the same name.
    second = manager.save(checkpoint.epoch_name(2), {"epoch": 2})
    assert manager.latest() == second
    assert checkpoint.read_state(second) == {"epoch": 2}


def test_non_chief_writes_nothing_in_model_dir(tmp_path):
    manager = checkpoint.CheckpointManager(str(tmp_path / "run"), make_objects(1), is_chief=False)
    assert manager.save(checkpoint.epoch_name(1), {}) is None
    assert not (tmp_path / "run").exists()


def test_restoring_another_model_fails(tmp_path):
    manager = checkpoint.CheckpointManager(str(tmp_path), make_objects(seed=1))
    path = manager.save(checkpoint.epoch_name(1), {})
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5), keras.layers.Dense(5)])
    objects = {"model": other, "optimizer": TorchSGD(0.1)}
    objects["optimizer"].build(other.trainable_variables)
    with pytest.raises(ValueError, match="does not match"):
        checkpoint.CheckpointManager(str(tmp_path), objects).restore(path)
