"""Fixtures of the training tests: small learnable datasets written on disk."""

import numpy as np
import pytest
import train_helpers


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    """cifar-10-batches-py/ with 5 x 64 training and 100 test images of 10 colour classes."""
    folder = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    train_helpers.write_cifar10(str(folder), np.random.default_rng(0))
    return str(folder)


@pytest.fixture(scope="session")
def imagenet_dir(tmp_path_factory):
    """train/<wnid>/*.JPEG (4 classes x 24) and val/<wnid>/*.JPEG (4 x 6), 40x40, PIL-written."""
    root = tmp_path_factory.mktemp("imagenet")
    train_helpers.write_imagenet(str(root), np.random.default_rng(0))
    return str(root)
