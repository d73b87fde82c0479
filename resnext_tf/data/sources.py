"""Chooses and opens the source of a dataset: in-memory CIFAR, ImageNet files, TFDS or synthetic."""

import dataclasses
import functools
import os

from resnext_tf.data import cifar, imagenet
from resnext_tf.data.config import SYNTHETIC, DataConfig, DatasetSpec
from resnext_tf.errors import DataError
from resnext_tf.recipes import recipe


@dataclasses.dataclass(frozen=True)
class SyntheticSplit:
    """Generated images standing in for a split of num_examples."""

    num_examples: int


@dataclasses.dataclass(frozen=True)
class Source:
    """The splits of a dataset: CifarArrays, FileIndex, TfdsSplit or SyntheticSplit values."""

    num_classes: int
    splits: dict

    def num_examples(self, split):
        data = self.splits.get(split)
        return 0 if data is None else data.num_examples


def _imagenet_folders(data_dir):
    classes = imagenet.class_names(data_dir)
    splits = {s: imagenet.load_file_index(data_dir, s, classes) for s in ("train", "eval")}
    return Source(len(classes), splits)


def _check_imagenet_dir(data_dir):
    """An ImageNet data_dir must be an existing folder (remote TFDS paths are left to TFDS)."""
    if data_dir is None or "://" in data_dir or os.path.isdir(data_dir):
        return
    what = "is not a folder" if os.path.exists(data_dir) else "does not exist"
    error = DataError if os.path.exists(data_dir) else cifar.DataNotFoundError
    raise error(
        f"ImageNet data_dir={data_dir!r} {what}; expected a folder with train/<wnid>/*.JPEG and "
        "val/<wnid>/*.JPEG, or a TFDS data_dir where imagenet2012 is prepared."
    )


@functools.lru_cache(maxsize=8)
def load_source(dataset, data_dir):
    """Opens (once per process) the source that DataConfig(dataset, data_dir) selects.

    Raises:
        DataError: data_dir is missing, damaged or not in a supported layout (for ImageNet, a
            folder without train/ or val/ is taken as a TFDS data_dir and fails if unprepared).
    """
    known = recipe(dataset)
    if data_dir == SYNTHETIC:
        # Synthetic data reports the official split sizes.
        splits = {"train": known.num_train, "eval": known.num_eval}
        return Source(known.num_classes, {s: SyntheticSplit(n) for s, n in splits.items()})
    if known.stem == "cifar":
        return Source(known.num_classes, cifar.load_cifar(dataset, data_dir))
    _check_imagenet_dir(data_dir)
    if data_dir is not None and imagenet.is_folder_layout(data_dir):
        return _imagenet_folders(data_dir)
    return Source(known.num_classes, imagenet.load_tfds_splits(data_dir))


def dataset_spec(config: DataConfig) -> DatasetSpec:
    """Returns the class count, split sizes and image shape of config's dataset.

    Cheap: reads no image (CIFAR reads its arrays once per process, an ImageNet folder its
    cached file index).
    """
    source = load_source(config.dataset, config.data_dir)
    size = config.crop_size
    return DatasetSpec(
        num_classes=source.num_classes,
        num_train=source.num_examples("train"),
        num_eval=source.num_examples("eval"),
        image_shape=(size, size, 3),
    )
