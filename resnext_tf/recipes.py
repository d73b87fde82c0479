"""The original training recipe of each dataset, in one place (docs/reference.md "Recipes").

Everything that depends on the dataset reads its `Recipe`: class count and split sizes, crop and
evaluation resize (input pipeline, export), default depth, batch, learning rate, epochs, weight
decay and step schedule (TrainConfig, schedules). A new dataset is one more entry of RECIPES plus
its reader in resnext_tf.data.

Pure Python: importing it loads neither TensorFlow nor Keras.
"""

import dataclasses

from resnext_tf.errors import check_choice

# SGD of the original on every dataset (opts.lua: -LR 0.1, -momentum 0.9, -weightDecay 1e-4;
# train.lua: Nesterov, dampening 0).
LR = 0.1
MOMENTUM = 0.9
NESTEROV = True
WEIGHT_DECAY = 1e-4


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The original's settings for one dataset.

    Attributes:
        stem: "imagenet" or "cifar": the network stem and stages the dataset trains.
        num_classes, num_train, num_eval: classes and official split sizes.
        mean, std: per-channel normalization of the original (docs/reference.md "Data"), on
            the scale it normalizes: [0, 1] images on ImageNet, 0-255 on CIFAR.
        image_size: side of the square crops the model sees.
        eval_resize: evaluation resizes the shorter side to this before the centre crop of
            image_size (equal to image_size: no resize).
        depth: default network depth.
        batch_size: global batch of the recipe, to which `lr` belongs.
        epochs, weight_decay: training length and coupled L2 factor.
        lr: learning rate at batch_size; other batches scale it linearly.
        decay_every: the step schedule multiplies the rate by 0.1 every this many epochs; or
        decay_at: once epoch / epochs exceeds each of these fractions.
    """

    stem: str
    num_classes: int
    num_train: int
    num_eval: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    eval_resize: int
    depth: int
    batch_size: int
    epochs: int
    weight_decay: float
    lr: float = LR
    decay_every: int | None = None
    decay_at: tuple[float, ...] = ()

    def scaled_lr(self, batch_size):
        """The learning rate of a `batch_size` batch by linear scaling (the original's README:
        CIFAR batch 64 trains at 0.05)."""
        return self.lr * batch_size / self.batch_size

    def eval_resize_for(self, crop_size):
        """The evaluation's shorter side for a crop_size crop: crop_size * eval_resize /
        image_size to the nearest integer (256 for 224 on ImageNet), which keeps the crop's
        share of the image as close to the original's as an integer allows; 256 / 224 = 8 / 7
        leaves no ties."""
        return (int(crop_size) * self.eval_resize + self.image_size // 2) // self.image_size

    @property
    def step_decays(self):
        """When the step schedule decays, in words (for --help)."""
        if self.decay_every:
            return f"every {self.decay_every} epochs"
        return f"after {' and '.join(f'{f:.0%}' for f in self.decay_at)} of the epochs"

    def decays(self, epoch, epochs):
        """How many x0.1 decays the step schedule has applied at `epoch` (1-based) of `epochs`."""
        if self.decay_every:
            return (epoch - 1) // self.decay_every
        # The original's float comparison: 147 / 300 == 0.49 does not decay yet.
        return sum(epoch / epochs > fraction for fraction in self.decay_at)


_CIFAR10 = Recipe(
    stem="cifar",
    num_classes=10,
    num_train=50_000,
    num_eval=10_000,
    mean=(125.3, 123.0, 113.9),
    std=(63.0, 62.1, 66.7),
    image_size=32,
    eval_resize=32,
    depth=29,
    batch_size=128,
    epochs=300,
    weight_decay=5e-4,
    decay_at=(0.49, 0.74),
)
RECIPES = {
    "cifar10": _CIFAR10,
    "cifar100": dataclasses.replace(
        _CIFAR10, num_classes=100, mean=(129.3, 124.1, 112.4), std=(68.2, 65.4, 70.4)
    ),
    "imagenet": Recipe(
        stem="imagenet",
        num_classes=1000,
        num_train=1_281_167,
        num_eval=50_000,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        image_size=224,
        eval_resize=256,
        depth=50,
        batch_size=256,
        epochs=100,
        weight_decay=WEIGHT_DECAY,
        decay_every=30,
    ),
}
DATASETS = tuple(RECIPES)


def recipe(dataset):
    """The Recipe of `dataset`.

    Raises:
        ValueError: for an unknown dataset, naming the known ones.
    """
    check_choice("dataset", dataset, DATASETS)
    return RECIPES[dataset]
