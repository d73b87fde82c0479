"""tf.data input pipelines for CIFAR-10/100 and ImageNet with the original ResNeXt recipe."""

from resnext_tf.data.cifar import DataNotFoundError
from resnext_tf.data.config import DataConfig, DatasetSpec
from resnext_tf.data.pipeline import build_dataset
from resnext_tf.data.sources import dataset_spec

__all__ = ["DataConfig", "DataNotFoundError", "DatasetSpec", "build_dataset", "dataset_spec"]
