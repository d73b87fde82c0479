"""Atomic checkpoints: round trip, pointers, retention, crashes in the middle of a save."""

import errno
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from resnext_tf import checkpoints, fileio
from resnext_tf.errors import CheckpointError
from resnext_tf.training import checkpoint
from resnext_tf.training.lock import ModelDirLock
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
    path = manager.save(checkpoints.step_name(7), {"epoch": 2, "step": 3})
    assert path == str(tmp_path / "checkpoints" / "step-000000007")
    assert manager.latest() == path

    fresh = make_objects(seed=2)
    assert not np.array_equal(values(fresh)[0], values(saved)[0])
    state = checkpoint.CheckpointManager(str(tmp_path), fresh).restore(path)
    assert state == {"epoch": 2, "step": 3}
    assert_same(values(fresh), values(saved))


def test_find_checkpoint_accepts_run_dir_subdir_and_checkpoint(tmp_path):
    manager = checkpoint.CheckpointManager(str(tmp_path), make_objects(seed=1))
    path = manager.save(checkpoints.epoch_name(1), {})
    for where in (tmp_path, tmp_path / "checkpoints", path, tmp_path / "checkpoints" / "latest"):
        assert checkpoints.find_checkpoint(str(where)) == path
    assert checkpoints.find_checkpoint(str(tmp_path / "elsewhere")) is None


def test_retention_keeps_latest_best_and_newest_epochs(tmp_path):
    manager = checkpoint.CheckpointManager(str(tmp_path), make_objects(seed=1), keep=2)
    manager.save(checkpoints.epoch_name(1), {}, is_best=True)
    manager.save(checkpoints.step_name(15), {})
    for epoch in (2, 3, 4):
        manager.save(checkpoints.epoch_name(epoch), {})
    names = sorted(n for n in os.listdir(manager.directory) if n[0] != ".")
    assert names == ["best", "epoch-0001", "epoch-0003", "epoch-0004", "latest"]
    assert manager.best().endswith("epoch-0001")
    assert manager.latest().endswith("epoch-0004")


def test_crash_while_writing_leaves_latest_loadable(tmp_path, monkeypatch):
    objects = make_objects(seed=1)
    manager = checkpoint.CheckpointManager(str(tmp_path), objects)
    first = manager.save(checkpoints.epoch_name(1), {"epoch": 1})
    expected = values(objects)
    objects["optimizer"].apply(
        [keras.ops.ones_like(v) for v in objects["model"].trainable_variables],
        objects["model"].trainable_variables,
    )

    def crash(directory):
        raise OSError("disk gone while flushing")

    monkeypatch.setattr(fileio, "fsync_tree", crash)
    with pytest.raises(CheckpointError, match="epoch-0002 .*: disk gone while flushing"):
        manager.save(checkpoints.epoch_name(2), {"epoch": 2})
    monkeypatch.undo()
    assert sorted(os.listdir(manager.directory)) == ["epoch-0001", "latest"]  # tmp removed

    restarted = make_objects(seed=3)
    manager = checkpoint.CheckpointManager(str(tmp_path), restarted)
    assert manager.latest() == first
    assert manager.restore(manager.latest()) == {"epoch": 1}
    assert_same(values(restarted), expected)


def test_temporaries_of_killed_writers_are_removed_by_the_next_lock_holder(tmp_path):
    manager = checkpoint.CheckpointManager(str(tmp_path), make_objects(seed=1))
    manager.save(checkpoints.epoch_name(1), {})
    leftovers = [
        tmp_path / "checkpoints" / ".tmp-4242-0a1b2c3d-epoch-0002",
        tmp_path / "checkpoints" / "latest.tmp-4242",  # the name older versions used
        tmp_path / ".tmp-4242-0a1b2c3d-train_log.csv",
        tmp_path / ".tmp-4242-0a1b2c3d-checkpoints",
    ]
    for path in leftovers:
        path.mkdir() if "epoch" in path.name or path.name.endswith("checkpoints") else path.touch()
    # Constructing a manager no longer touches anything: another run may be writing them.
    checkpoint.CheckpointManager(str(tmp_path), make_objects(seed=2))
    assert all(path.exists() for path in leftovers)
    with ModelDirLock(str(tmp_path)):
        manager.remove_temporaries()
    assert not any(path.exists() for path in leftovers)
    assert sorted(os.listdir(manager.directory)) == ["epoch-0001", "latest"]


def test_temporary_names_are_private_to_the_process():
    a, b = fileio.temp_name("epoch-0001"), fileio.temp_name("epoch-0001")
    assert a != b and a.startswith(f".tmp-{os.getpid()}-") and a.endswith("-epoch-0001")


def test_save_under_an_existing_name_replaces_it(tmp_path, monkeypatch):
    objects = make_objects(seed=1)
    manager = checkpoint.CheckpointManager(str(tmp_path), objects)
    manager.save(checkpoints.epoch_name(1), {"epoch": 1, "run": "old"})
    for exchange in (True, False):  # atomic swap, and the rename-aside fallback
        if not exchange:
            monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
        objects = make_objects(seed=5 + exchange)
        manager = checkpoint.CheckpointManager(str(tmp_path), objects)
        path = manager.save(checkpoints.epoch_name(1), {"epoch": 1, "run": f"new{exchange}"})
        restored = make_objects(seed=9)
        state = checkpoint.CheckpointManager(str(tmp_path), restored).restore(path)
        assert state["run"] == f"new{exchange}"
        assert_same(values(restored), values(objects))
        assert sorted(os.listdir(manager.directory)) == ["epoch-0001", "latest"]


def test_crash_before_the_pointer_moves(tmp_path, monkeypatch):
    manager = checkpoint.CheckpointManager(str(tmp_path), make_objects(seed=1))
    first = manager.save(checkpoints.epoch_name(1), {"epoch": 1})

    def crash(path, obj):
        raise OSError("killed before the pointer was replaced")

    monkeypatch.setattr(fileio, "write_json_atomic", crash)
    with pytest.raises(CheckpointError, match="killed before the pointer"):
        manager.save(checkpoints.epoch_name(2), {"epoch": 2})
    monkeypatch.undo()
    assert manager.latest() == first  # the complete epoch-0002 is not named yet
    # The restarted run reaches the same position again and saves it under the same name.
    second = manager.save(checkpoints.epoch_name(2), {"epoch": 2})
    assert manager.latest() == second
    assert checkpoints.read_state(second) == {"epoch": 2}


def test_non_chief_writes_nothing_in_model_dir(tmp_path):
    manager = checkpoint.CheckpointManager(str(tmp_path / "run"), make_objects(1), is_chief=False)
    assert manager.save(checkpoints.epoch_name(1), {}) is None
    assert not (tmp_path / "run").exists()


def test_restoring_another_model_fails(tmp_path):
    manager = checkpoint.CheckpointManager(str(tmp_path), make_objects(seed=1))
    path = manager.save(checkpoints.epoch_name(1), {})
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5), keras.layers.Dense(5)])
    objects = {"model": other, "optimizer": TorchSGD(0.1)}
    objects["optimizer"].build(other.trainable_variables)
    with pytest.raises(ValueError, match="does not match"):
        checkpoint.CheckpointManager(str(tmp_path), objects).restore(path)


# ---------------------------------------------------------------------- damaged checkpoints


def two_epochs(tmp_path, seed=1):
    """A run folder with epoch-0001 and epoch-0002 (latest); returns (manager, first, second)."""
    manager = checkpoint.CheckpointManager(str(tmp_path), make_objects(seed))
    first = manager.save(checkpoints.epoch_name(1), {"global_step": 10, "epoch_complete": True})
    second = manager.save(checkpoints.epoch_name(2), {"global_step": 20, "epoch_complete": True})
    return manager, first, second


def data_file(path):
    (name,) = [n for n in os.listdir(path) if n.startswith(f"{checkpoints.PREFIX}.data")]
    return os.path.join(path, name)


def truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def test_truncated_newest_checkpoint_warns_and_falls_back(tmp_path):
    manager, first, second = two_epochs(tmp_path)
    truncate(data_file(second))
    pattern = (
        r"epoch-0002 \(latest; ckpt\.data-\S+ has \d+ bytes, expected \d+\).*Using .*epoch-0001"
    )
    for resolve in (manager.newest_valid, lambda: checkpoints.find_checkpoint(str(tmp_path))):
        with pytest.warns(UserWarning, match=pattern):
            assert resolve() == first
    restored = make_objects(seed=4)
    checkpoint.CheckpointManager(str(tmp_path), restored).restore(first)


def test_a_flipped_byte_of_the_same_size_is_detected(tmp_path):
    manager, first, second = two_epochs(tmp_path)
    with open(data_file(second), "r+b") as f:
        byte = f.read(1)
        f.seek(0)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.warns(UserWarning, match="does not match its sha256"):
        assert manager.newest_valid() == first


def test_a_file_left_out_of_the_manifest_fails_it(tmp_path):
    # A manifest without the data file vouched for the rest; TensorFlow's checksum then failed
    # the restore with a traceback, without falling back.
    manager, first, second = two_epochs(tmp_path)
    name = os.path.basename(data_file(second))
    with open(data_file(second), "r+b") as f:
        byte = f.read(1)
        f.seek(0)
        f.write(bytes([byte[0] ^ 1]))
    manifest = os.path.join(second, checkpoints.MANIFEST_FILE)
    listed = fileio.read_json(manifest)
    del listed["files"][name]
    fileio.write_json_atomic(manifest, listed)
    assert checkpoints.verify(second) == f"{name} is not in manifest.json"
    with pytest.warns(UserWarning, match=f"epoch-0002 \\(latest; {name} is not in manifest"):
        assert manager.newest_valid() == first
    checkpoint.CheckpointManager(str(tmp_path), make_objects(seed=4)).restore(first)


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _full_disk_in_tensorflow(*args, **kwargs):
    raise tf.errors.ResourceExhaustedError(
        None, None, "/x/ckpt_temp/part-00000-of-00001.data; No space left on device [Op:SaveV2]"
    )


@pytest.mark.parametrize(
    "where, failure",
    [
        ("resnext_tf.training.checkpoint._write_manifest", _full_disk),
        ("tensorflow.train.Checkpoint.write", _full_disk_in_tensorflow),
        ("resnext_tf.fileio.write_json_atomic", _full_disk),
    ],
)
def test_a_full_disk_while_saving_is_a_one_line_error(where, failure, tmp_path, monkeypatch):
    manager = checkpoint.CheckpointManager(str(tmp_path), make_objects(seed=1))
    first = manager.save(checkpoints.epoch_name(1), {"epoch": 1})
    monkeypatch.setattr(where, failure)
    with pytest.raises(CheckpointError) as error:
        manager.save(checkpoints.epoch_name(2), {"epoch": 2})
    assert str(error.value).startswith(
        f"Cannot save the checkpoint epoch-0002 in {manager.directory}: No space left on "
        "device. The checkpoints saved before are intact"
    )
    assert manager.latest() == first and checkpoints.verify(first) is None
    assert not [n for n in os.listdir(manager.directory) if n.startswith(fileio.TMP_PREFIX)]


def test_checkpoint_without_manifest_is_checked_by_reading_its_tensors(tmp_path):
    manager, first, second = two_epochs(tmp_path)
    for path in (first, second):
        os.remove(os.path.join(path, checkpoints.MANIFEST_FILE))
    assert checkpoints.verify(second) is None
    truncate(data_file(second))
    with pytest.warns(UserWarning, match="epoch-0002.*tensors cannot be read"):
        assert manager.newest_valid() == first


@pytest.mark.parametrize(
    "content, problem",
    [
        ("", r"latest \(is unreadable \(JSONDecodeError\)\)"),
        ('{"name": "epoch-0009"}', "epoch-0009"),
    ],
)
def test_damaged_latest_pointer_falls_back_to_the_newest_valid(tmp_path, content, problem):
    manager, first, second = two_epochs(tmp_path)
    with open(os.path.join(manager.directory, "latest"), "w") as f:
        f.write(content)
    with pytest.warns(UserWarning, match=problem + ".*Using .*epoch-0002"):
        assert checkpoints.find_checkpoint(str(tmp_path)) == second
    with pytest.warns(UserWarning, match=problem):
        assert checkpoints.find_checkpoint(os.path.join(manager.directory, "latest")) == second


def test_no_valid_checkpoint_is_a_one_line_checkpoint_error(tmp_path):
    manager, first, second = two_epochs(tmp_path)
    truncate(data_file(first))
    with open(os.path.join(second, checkpoints.STATE_FILE), "w") as f:
        f.write('{"epoch": ')
    with pytest.raises(CheckpointError) as error:
        manager.newest_valid()
    message = str(error.value)
    assert "\n" not in message
    assert "epoch-0002" in message and "epoch-0001" in message and "Remove" in message


def test_a_damaged_checkpoint_named_directly_is_not_replaced_by_another(tmp_path):
    manager, first, second = two_epochs(tmp_path)
    truncate(data_file(first))
    with pytest.raises(CheckpointError, match="epoch-0001 .*damaged"):
        checkpoints.find_checkpoint(first)
    assert checkpoints.find_checkpoint(second) == second
    with open(os.path.join(manager.directory, "best"), "w") as f:
        f.write('{"name": "epoch-0001"}')
    with pytest.raises(CheckpointError, match="named by .*best"):
        checkpoints.find_checkpoint(os.path.join(manager.directory, "best"))


def test_holds_checkpoints_sees_damaged_ones_too(tmp_path):
    manager = checkpoint.CheckpointManager(str(tmp_path), make_objects(seed=1))
    assert not manager.holds_checkpoints() and manager.newest_valid() is None
    os.makedirs(os.path.join(manager.directory, "epoch-0003"))
    assert manager.holds_checkpoints()
    with pytest.raises(CheckpointError, match="latest \\(is missing\\).*epoch-0003"):
        manager.newest_valid()
