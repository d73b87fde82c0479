"""A published weight name always means the published weights, also in the constructors and the
trainer's loader, even where a file or folder of that name sits in the working directory."""

import pytest

from resnext_tf import build_resnext, create_model, runs
from resnext_tf.applications import ResNeXt50
from resnext_tf.errors import WeightsError
from resnext_tf.weights import pretrained


@pytest.fixture
def shadowing_cwd(tmp_path, monkeypatch):
    """A working directory holding a folder and a file named like published weights, and an
    empty weight cache (nothing can be downloaded here)."""
    (tmp_path / "imagenet").mkdir()
    (tmp_path / "imagenet" / "latest").write_text("checkpoints/epoch-0001\n")
    (tmp_path / "torchvision_v1").write_bytes(b"not the published file")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path


def test_constructor_checks_a_name_even_where_a_folder_shadows_it(shadowing_cwd):
    # Before: the existing ./imagenet folder skipped the published-weights checks.
    with pytest.raises(WeightsError, match="classes"):
        ResNeXt50(weights="imagenet", classes=10)


def tiny():
    return build_resnext(depth=11, cardinality=2, base_width=4, stem="cifar", num_classes=10,
                         shortcut_type="A", input_shape=(32, 32, 3))  # fmt: skip


def published_architecture():
    return create_model("resnext50_32x4d", input_shape=(64, 64, 3))


@pytest.mark.parametrize("name", ["imagenet", "torchvision_v1"])
def test_trainer_loader_treats_a_name_as_the_published_file(shadowing_cwd, name):
    # Before: ./imagenet was read as a model_dir of ours and ./torchvision_v1 as a weights file
    # with no hash check. Now both names go to the published file, which is not in the cache.
    with pytest.raises(pretrained.WeightsUnavailable) as info:
        runs.load_run_or_weights(published_architecture(), name)
    assert "checkpoint" not in str(info.value).lower()


def test_a_path_is_a_path(shadowing_cwd):
    with pytest.raises(WeightsError, match="torchvision_v1"):
        runs.load_run_or_weights(tiny(), "./torchvision_v1")


def test_truncated_weights_h5_is_a_weights_error_naming_it(tmp_path):
    model = tiny()
    path = tmp_path / "run.weights.h5"
    model.save_weights(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(WeightsError, match="run.weights.h5"):
        runs.load_run_or_weights(tiny(), str(path))
    with pytest.raises(WeightsError, match="run.weights.h5"):
        runs.source_num_classes(str(path), default=10)
