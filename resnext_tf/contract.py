"""What a model expects of its images and what its outputs mean: its data contract.

Like timm's pretrained_cfg, a `DataContract` (recipe, input size, evaluation resize, class
names) travels with a model and its checkpoints, so export and predict read it instead of
guessing. Pure Python: importing it loads neither Keras nor TensorFlow.
"""

import dataclasses
import functools
import json
import os

from resnext_tf.recipes import recipe

DATA_FILES = os.path.join(os.path.dirname(__file__), "data_files")
IMAGENET_CLASS_INDEX = os.path.join(DATA_FILES, "imagenet_class_index.json")
# The label_names of CIFAR-10's batches.meta and fine_label_names of CIFAR-100's meta.
CIFAR_CLASS_NAMES = os.path.join(DATA_FILES, "cifar_class_names.json")
# The attribute of a Keras model that holds its DataContract.
ATTRIBUTE = "data_contract"


@functools.cache
def imagenet_classes():
    """(wnids, labels) of the 1000 ImageNet classes in class-index order (shipped file)."""
    with open(IMAGENET_CLASS_INDEX, encoding="utf-8") as f:
        index = json.load(f)
    rows = [index[str(i)] for i in range(len(index))]
    return tuple(w for w, _ in rows), tuple(label for _, label in rows)


@functools.cache
def _cifar_names():
    with open(CIFAR_CLASS_NAMES, encoding="utf-8") as f:
        return {name: tuple(labels) for name, labels in json.load(f).items()}


def dataset_classes(dataset, num_classes):
    """(labels, wnids) of `dataset` where it has `num_classes` classes, else (None, None)."""
    if dataset == "imagenet":
        wnids, labels = imagenet_classes()
    else:
        labels, wnids = _cifar_names().get(dataset), None
    if labels is None or len(labels) != num_classes:
        return None, None
    return labels, wnids


def folder_classes(wnids):
    """(labels, wnids) of class folders: ImageNet's labels for its wnids, else the folder names."""
    known_wnids, known_labels = imagenet_classes()
    label_of = dict(zip(known_wnids, known_labels, strict=True))
    if not any(w in label_of for w in wnids):
        return tuple(wnids), None
    return tuple(label_of.get(w, w) for w in wnids), tuple(wnids)


@dataclasses.dataclass(frozen=True)
class DataContract:
    """The evaluation a model was trained for, and the names of its classes.

    Attributes:
      dataset: A recipe of resnext_tf.recipes ("imagenet", "cifar10", "cifar100").
      image_size: Side of the square input.
      eval_resize: Shorter side before the centre crop (ImageNet); None: the recipe's ratio.
      antialias: Low-pass filter when downscaling in the resize.
      labels: One name per class, or None where unknown.
      wnids: ImageNet WordNet ids per class, or None.
    """

    dataset: str
    image_size: int | None = None
    eval_resize: int | None = None
    antialias: bool = False
    labels: tuple | None = None
    wnids: tuple | None = None

    def __post_init__(self):
        known = recipe(self.dataset)
        size = known.image_size if self.image_size is None else int(self.image_size)
        object.__setattr__(self, "image_size", size)
        if self.eval_resize is None:
            object.__setattr__(self, "eval_resize", known.eval_resize_for(size))
        for name in ("labels", "wnids"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(str(v) for v in getattr(self, name)))
        if self.labels and self.wnids and len(self.labels) != len(self.wnids):
            raise ValueError(
                f"labels and wnids must name the same classes; received {len(self.labels)} "
                f"labels and {len(self.wnids)} wnids."
            )

    @classmethod
    def for_dataset(cls, dataset, num_classes, image_size=None, **kwargs):
        """The contract of `dataset` for `num_classes`, with its class names where they fit."""
        labels, wnids = dataset_classes(dataset, num_classes)
        return cls(dataset, image_size, labels=labels, wnids=wnids, **kwargs)

    @property
    def recipe(self):
        return recipe(self.dataset)

    @property
    def is_cifar(self):
        return self.recipe.stem == "cifar"

    def with_labels(self, labels):
        """A copy naming the classes `labels` (wnids kept only where they still fit)."""
        labels = tuple(labels)
        wnids = self.wnids if self.wnids and len(self.wnids) == len(labels) else None
        return dataclasses.replace(self, labels=labels, wnids=wnids)

    def check_classes(self, num_classes):
        """Raises ValueError unless the names (where known) name `num_classes` classes."""
        if self.labels is not None and len(self.labels) != num_classes:
            raise ValueError(
                f"The class names must name every class; received {len(self.labels)} names for "
                f"{num_classes} classes."
            )

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record):
        """Reads `to_json`'s record (from a checkpoint or an export: outside input).

        Raises:
          ValueError: for a record that is not one.
        """
        if not isinstance(record, dict) or not isinstance(record.get("dataset"), str):
            raise ValueError(f"Expected a data contract record; received {str(record)[:200]!r}.")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(record) - fields
        if unknown:
            raise ValueError(f"Unknown data contract fields {sorted(unknown)}.")
        return cls(**record)


def of_model(model):
    """The DataContract a model carries (see ATTRIBUTE), or None."""
    return getattr(model, ATTRIBUTE, None)


def attach(model, contract):
    """Sets `model`'s data contract and returns the model."""
    object.__setattr__(model, ATTRIBUTE, contract)
    return model
