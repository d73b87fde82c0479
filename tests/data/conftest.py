"""Small on-disk datasets in the official formats, written by the tests themselves."""

import os
import pickle
import tarfile

import numpy as np
import pytest
from image_samples import WNIDS, encode, natural_image, write_cifar_batches


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory):
    """A folder of CIFAR-10 batch files with 5 x 12 train and 20 test images.

    Not named cifar-10-batches-py: the reader checks official names against the official MD5.
    """
    folder = tmp_path_factory.mktemp("cifar10") / "my-cifar-10"
    train = write_cifar_batches(
        folder, [f"data_batch_{i}" for i in range(1, 6)], [12] * 5, b"labels", 1
    )
    test = write_cifar_batches(folder, ["test_batch"], [20], b"labels", 2)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c"] * 10}))
    return folder, train, test


@pytest.fixture(scope="session")
def cifar100_tarball(tmp_path_factory):
    """my-cifar-100.tar.gz (the official layout, not the official name, so no MD5 check) with 40
    train and 16 test images (fine labels)."""
    root = tmp_path_factory.mktemp("cifar100")
    folder = root / "cifar-100-python"
    train = write_cifar_batches(folder, ["train"], [40], b"fine_labels", 3)
    test = write_cifar_batches(folder, ["test"], [16], b"fine_labels", 4)
    path = root / "my-cifar-100.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    return path, train, test


def _write_imagenet(root, rng, per_class):
    for split, count in per_class.items():
        for wnid in WNIDS:
            os.makedirs(root / split / wnid)
            for i in range(count):
                h, w = rng.integers(90, 200, 2)
                (root / split / wnid / f"{wnid}_{i}.JPEG").write_bytes(
                    encode(natural_image(rng, h, w), quality=90)
                )


@pytest.fixture(scope="session")
def imagenet_dir(tmp_path_factory):
    """ImageNet folders: 3 classes x 5 train and x 2 val JPEGs, plus the known quirks.

    train/n01443537 also holds a CMYK JPEG, a PNG named .JPEG and a grayscale JPEG;
    train/n01484850_9.JPEG is empty, train/n01440764_9.JPEG and a val file are truncated.
    """
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(5)
    _write_imagenet(root, rng, {"train": 5, "val": 2})
    quirks = root / "train" / WNIDS[1]
    (quirks / "cmyk.JPEG").write_bytes(
        encode(natural_image(rng, 120, 160), mode="CMYK", quality=95)
    )
    (quirks / "png.JPEG").write_bytes(encode(natural_image(rng, 100, 130), fmt="PNG"))
    (quirks / "grey.JPEG").write_bytes(encode(natural_image(rng, 110, 90)[..., 0]))
    (root / "train" / WNIDS[2] / f"{WNIDS[2]}_9.JPEG").write_bytes(b"")
    good = encode(natural_image(rng, 150, 150), quality=90)
    (root / "train" / WNIDS[0] / f"{WNIDS[0]}_9.JPEG").write_bytes(good[: len(good) // 2])
    (root / "val" / WNIDS[2] / "truncated.JPEG").write_bytes(good[: len(good) // 3])
    return root
