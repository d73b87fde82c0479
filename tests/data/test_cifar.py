"""CIFAR readers: official python-version folder and tarball, TFDS, and the offline message."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from image_samples import write_cifar_batches

from resnext_tf.data import DataConfig, DataNotFoundError, build_dataset, cifar, dataset_spec
from resnext_tf.data.cifar import load_cifar


def _check(splits, train, test):
    for name, (images, labels) in (("train", train), ("eval", test)):
        np.testing.assert_array_equal(splits[name].images, images)
        np.testing.assert_array_equal(splits[name].labels, labels)
        assert splits[name].images.dtype == np.uint8 and splits[name].labels.dtype == np.int32


def test_reads_a_folder_of_batch_files(cifar10_dir):
    folder, train, test = cifar10_dir
    _check(load_cifar("cifar10", str(folder)), train, test)


def test_reads_official_folder_and_its_parent_without_md5_check(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    train = write_cifar_batches(
        folder, [f"data_batch_{i}" for i in range(1, 6)], [3] * 5, b"labels", 1
    )
    test = write_cifar_batches(folder, ["test_batch"], [4], b"labels", 2)
    monkeypatch.setenv(cifar.SKIP_MD5_ENV, "1")  # fake contents under the official name
    _check(load_cifar("cifar10", str(tmp_path)), train, test)
    _check(load_cifar("cifar10", str(folder)), train, test)


def test_reads_cifar100_fine_labels_from_tarball(cifar100_tarball):
    path, train, test = cifar100_tarball
    _check(load_cifar("cifar100", str(path)), train, test)
    spec = dataset_spec(DataConfig("cifar100", data_dir=path))
    assert spec == (100, 40, 16, (32, 32, 3))


def test_eval_pipeline_yields_the_normalized_test_set_in_file_order(cifar10_dir):
    root, _, (images, labels) = cifar10_dir
    batches = list(build_dataset(DataConfig("cifar10", data_dir=root), "eval", 8))
    got_images = np.concatenate([b[0].numpy() for b in batches])
    got_labels = np.concatenate([b[1].numpy() for b in batches])
    # 20 test images in batches of 8: 24 slots, the last 4 padded with label -1.
    assert got_images.shape == (24, 32, 32, 3)
    np.testing.assert_array_equal(got_labels, np.concatenate([labels, [-1] * 4]))
    mean, std = np.array([125.3, 123.0, 113.9]), np.array([63.0, 62.1, 66.7])
    np.testing.assert_allclose(got_images[:20], (images - mean) / std, atol=1e-5)


def test_tfds_source(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "_reachable", lambda host: True)  # the download is mocked
    with tfds.testing.mock_data(num_examples=24):
        cfg = DataConfig("cifar10", data_dir=str(tmp_path))
        spec = dataset_spec(cfg)
        images, labels = next(iter(build_dataset(cfg, "train", 8)))
    assert spec.num_classes == 10 and spec.num_train == 24 and spec.num_eval == 24
    assert images.shape == (8, 32, 32, 3) and labels.dtype == tf.int32
    assert set(labels.numpy()) <= set(range(10))


def _assert_says_what_to_download(error, cause):
    message = str(error)
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message
    assert "data_dir=/path/to/cifar-100-python.tar.gz" in message
    assert "cifar-100-python or its parent folder" in message
    assert cause in message
    # Raised `from None`: no long chain of download errors above the message.
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_offline_fails_fast_and_says_what_to_download(tmp_path, monkeypatch):
    checked = []
    monkeypatch.setattr(cifar, "_reachable", lambda host: checked.append(host))
    with pytest.raises(DataNotFoundError) as info:
        dataset_spec(DataConfig("cifar100", data_dir=str(tmp_path)))
    assert checked == ["www.cs.toronto.edu"]
    _assert_says_what_to_download(info.value, "www.cs.toronto.edu is unreachable")


def test_failed_download_says_what_to_download(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.cs.toronto.edu'")

    monkeypatch.setattr(cifar, "_reachable", lambda host: True)
    # Every TFDS download goes through the download manager.
    monkeypatch.setattr(tfds.download.DownloadManager, "download", offline)
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", offline)
    with pytest.raises(DataNotFoundError) as info:
        load_cifar("cifar100", str(tmp_path))
    _assert_says_what_to_download(info.value, "ConnectionError: Failed to resolve")


def test_missing_path_is_reported(tmp_path):
    missing = os.path.join(tmp_path, "nowhere")
    with pytest.raises(
        DataNotFoundError, match="no such file or directory.*cifar-10-python.tar.gz"
    ):
        load_cifar("cifar10", missing)
