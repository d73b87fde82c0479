"""Plain configuration of a training or evaluation run.

Fields default to the original fb.resnet.torch options; fields left as None are filled from the
dataset (REFERENCE.md: epochs, weight decay, learning-rate scaling, depth, class count).
"""

import dataclasses
import os
import warnings

from resnext_tf.layers import BOTTLENECK_TYPES, CONV_IMPLS, SHORTCUT_TYPES
from resnext_tf.training import schedules
from resnext_tf.training.optimizer import NO_DECAY_KINDS

# Option sets of the original (REFERENCE.md) plus this project's additions; the model's own
# (bottleneck, shortcut, convolution implementation) come from resnext_tf.layers.
STRATEGIES = ("auto", "off", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
DTYPES = ("float32", "mixed_float16", "mixed_bfloat16")
# Depth defaults: ResNeXt-50 on ImageNet, ResNeXt-29 on CIFAR (README recipes); ImageNet depths
# of the original ResNeXt model file.
DEFAULT_DEPTH = {"imagenet": 50, "cifar10": 29, "cifar100": 29}
IMAGENET_DEPTHS = (50, 101, 152)
# Global batch of the README recipes (8 GPUs): 256 on ImageNet, 128 on CIFAR.
DEFAULT_BATCH_SIZE = {"imagenet": 256, "cifar10": 128, "cifar100": 128}
# Above this global batch, a linearly scaled LR without warmup draws a warning: Goyal et al.
# (2017) keep the batch-256 error up to batch 8k with the linear rule only thanks to 5 epochs
# of gradual warmup.
WARMUP_ADVISED_BATCH = 1024


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"Unknown {name}; received {name}={value!r}; expected one of {allowed}.")


def _check_positive(name, value, allow_none=False, allow_zero=False):
    if value is None and allow_none:
        return
    if value is None or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}; received {name}={value!r}.")


@dataclasses.dataclass
class TrainConfig:
    """Everything a run needs; built by `flags.config_from_flags` or directly in Python.

    Model: dataset, depth, cardinality, base_width, bottleneck_type, shortcut_type, conv_impl,
    num_classes (None: the dataset's), sync_bn, zero_init_residual (gamma 0 on each block's last
    BN, as large-batch recipes do; off in the original).
    Data: data_dir (None: default location; "synthetic": random data), image_size, ten_crop,
    max_image_pixels / max_image_aspect / max_image_bytes (None: the ImageLimits default; an
    ImageNet image over a limit is replaced like an unreadable file).
    Optimisation: batch_size (global), lr (None: 0.1 * batch / reference batch), momentum,
    weight_decay, nesterov, epochs, epoch_number (1-based first epoch), seed, steps_per_epoch and
    train_steps (limits for smoke runs).
    Large-batch and modern options, off by default (the original recipe): lr_schedule ("step",
    the original's, or "cosine"), warmup_epochs (linear per-step warmup, fractions allowed),
    label_smoothing, no_weight_decay_on (kinds from optimizer.NO_DECAY_KINDS: "bn", "bias"),
    ema_decay (0: off; else the EMA of the weights is validated, checkpointed and exported).
    Run: model_dir (None: runs/<dataset>_resnext<depth>_<C>x<d>d; a local or network file
    system path), test_only, resume ("auto": continue from model_dir when it holds a checkpoint;
    "none"; or a model_dir / checkpoint directory), overwrite (a run that does not continue
    model_dir's own checkpoints first removes them, train_log.csv and the TensorBoard events;
    without it such a run is refused), retrain (weights file), reset_classifier, export_dir.
    Distribution: distribution_strategy, num_gpus (-1: all), tpu.
    Performance: dtype, jit_compile, deterministic.
    Checkpointing and logs: checkpoint_steps (0: end of epoch only), keep_checkpoints (0: all),
    log_steps.
    """

    dataset: str = "cifar10"
    depth: int | None = None
    cardinality: int = 1
    base_width: int = 64
    bottleneck_type: str = "resnext_C"
    shortcut_type: str = "B"
    conv_impl: str = "auto"
    num_classes: int | None = None
    sync_bn: bool = False
    zero_init_residual: bool = False

    data_dir: str | None = None
    image_size: int | None = None
    ten_crop: bool = False
    max_image_pixels: int | None = None
    max_image_aspect: float | None = None
    max_image_bytes: int | None = None

    batch_size: int | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    nesterov: bool = True
    epochs: int | None = None
    epoch_number: int = 1
    seed: int = 0
    steps_per_epoch: int | None = None
    train_steps: int | None = None
    lr_schedule: str = "step"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    no_weight_decay_on: tuple[str, ...] = ()
    ema_decay: float = 0.0

    model_dir: str | None = None
    test_only: bool = False
    resume: str = "auto"
    overwrite: bool = False
    retrain: str | None = None
    reset_classifier: bool = False
    export_dir: str | None = None

    distribution_strategy: str = "auto"
    num_gpus: int = -1
    tpu: str | None = None

    dtype: str = "float32"
    jit_compile: bool = False
    deterministic: bool = False

    checkpoint_steps: int = 0
    keep_checkpoints: int = 5
    log_steps: int = 10

    def __post_init__(self):
        _check_choice("dataset", self.dataset, schedules.DATASETS)
        defaults = {
            "depth": DEFAULT_DEPTH[self.dataset],
            "batch_size": DEFAULT_BATCH_SIZE[self.dataset],
            "weight_decay": schedules.DEFAULT_WEIGHT_DECAY[self.dataset],
            "epochs": schedules.DEFAULT_EPOCHS[self.dataset],
        }
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.model_dir is None:
            self.model_dir = os.path.join(
                "runs", f"{self.dataset}_resnext{self.depth}_{self.cardinality}x{self.base_width}d"
            )
        if isinstance(self.no_weight_decay_on, str):
            self.no_weight_decay_on = self.no_weight_decay_on.split(",")
        self.no_weight_decay_on = tuple(k.strip() for k in self.no_weight_decay_on if k.strip())
        scaled = self.lr is None
        if scaled:
            self.lr = schedules.default_learning_rate(self.dataset, self.batch_size)
        self._validate()
        if scaled and self.batch_size > WARMUP_ADVISED_BATCH and not self.warmup_epochs:
            warnings.warn(
                f"batch_size={self.batch_size} with the linearly scaled lr={self.lr:g} and no "
                "warmup: large batches lose accuracy without a gradual warmup; consider "
                "--warmup_epochs=5 (Goyal et al. 2017).",
                stacklevel=3,
            )

    @property
    def image_limits(self):
        """The ImageLimits of the ImageNet decode: the defaults, with the fields set here."""
        # Imported here: the resnext_tf.data package loads TensorFlow, which TorchSGD on the JAX
        # backend (resnext_tf.training.optimizer) must not need.
        from resnext_tf.data.config import ImageLimits

        limits = {
            "max_pixels": self.max_image_pixels,
            "max_aspect": self.max_image_aspect,
            "max_bytes": self.max_image_bytes,
        }
        return ImageLimits(**{k: v for k, v in limits.items() if v is not None})

    @property
    def is_cifar(self):
        """Whether the run uses the CIFAR stem and schedule."""
        return self.dataset.startswith("cifar")

    def _validate(self):
        self.image_limits  # noqa: B018  (ImageLimits checks its fields, naming a bad one)
        _check_choice("bottleneck_type", self.bottleneck_type, BOTTLENECK_TYPES)
        _check_choice("shortcut_type", self.shortcut_type, SHORTCUT_TYPES)
        _check_choice("conv_impl", self.conv_impl, CONV_IMPLS)
        _check_choice("distribution_strategy", self.distribution_strategy, STRATEGIES)
        _check_choice("dtype", self.dtype, DTYPES)
        if self.is_cifar and (self.depth - 2) % 9:
            raise ValueError(
                f"CIFAR ResNeXt needs (depth - 2) % 9 == 0; received depth={self.depth!r}; "
                "expected e.g. 29, 38 or 47."
            )
        if not self.is_cifar:
            _check_choice("depth", self.depth, IMAGENET_DEPTHS)
        for name in ("cardinality", "base_width", "batch_size", "epochs", "epoch_number"):
            _check_positive(name, getattr(self, name))
        for name in ("lr", "weight_decay", "checkpoint_steps", "keep_checkpoints"):
            _check_positive(name, getattr(self, name), allow_zero=True)
        for name in ("num_classes", "steps_per_epoch", "train_steps", "image_size"):
            _check_positive(name, getattr(self, name), allow_none=True)
        _check_positive("log_steps", self.log_steps)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1); received momentum={self.momentum!r}.")
        _check_choice("lr_schedule", self.lr_schedule, schedules.LR_SCHEDULES)
        for kind in self.no_weight_decay_on:
            _check_choice("no_weight_decay_on", kind, NO_DECAY_KINDS)
        if not 0.0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"warmup_epochs must be >= 0 and < epochs; received "
                f"warmup_epochs={self.warmup_epochs!r}, epochs={self.epochs!r}."
            )
        for name in ("label_smoothing", "ema_decay"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(
                    f"{name} must be in [0, 1); received {name}={getattr(self, name)!r}."
                )
        if self.epoch_number > self.epochs:
            raise ValueError(
                f"epoch_number must be <= epochs; received epoch_number={self.epoch_number!r}, "
                f"epochs={self.epochs!r}."
            )
        if "://" in self.model_dir:
            raise ValueError(
                f"model_dir must be a path of a local or network (NFS) file system: checkpoints "
                f"rely on atomic renames and the run lock on flock, which object stores lack; "
                f"received model_dir={self.model_dir!r}; expected e.g. /mnt/runs/r50."
            )
        if self.overwrite and (self.test_only or self.resume == "auto"):
            raise ValueError(
                f"overwrite removes model_dir's checkpoints before a fresh run and needs "
                f"resume='none' (or a resume directory of another run), without test_only; "
                f"received resume={self.resume!r}, test_only={self.test_only!r}."
            )
        if self.reset_classifier and self.num_classes is None:
            raise ValueError(
                "reset_classifier needs num_classes (the new head size); received num_classes=None."
            )
        if self.ten_crop and self.is_cifar:
            raise ValueError(
                f"ten_crop is an ImageNet evaluation; received ten_crop=True with "
                f"dataset={self.dataset!r}."
            )
