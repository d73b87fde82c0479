"""Fixtures of the training tests: small learnable datasets written on disk."""

import numpy as np
import pytest
import train_helpers


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    """A CIFAR-10 python-version folder with 5 x 64 training and 100 test images of 10 color
    classes. Not named cifar-10-batches-py: the reader checks official names against the
    official MD5."""
    folder = tmp_path_factory.mktemp("cifar") / "cifar10-sample"
    train_helpers.write_cifar10(str(folder), np.random.default_rng(0))
    return str(folder)


@pytest.fixture(scope="session")
def imagenet_dir(tmp_path_factory):
    """train/<wnid>/*.JPEG (4 classes x 24) and val/<wnid>/*.JPEG (4 x 6), 40x40, PIL-written."""
    root = tmp_path_factory.mktemp("imagenet")
    train_helpers.write_imagenet(str(root), np.random.default_rng(0))
    return str(root)
