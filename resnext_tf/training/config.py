"""TrainConfig: everything a training or evaluation run needs, and the description of its flags.

Each field carries its help text, flag group, choices and bounds as metadata (`option`); flags/
generates the absl flags of run_cifar.py and run_imagenet.py from them, so a field and its flag
are one fact. Fields left as None take the dataset's recipe (resnext_tf.recipes). Every option is
validated here, in `__post_init__`: bounds and choices from the metadata, then the rules that
relate fields; the model and data rules are those of build_resnext and DataConfig themselves.
"""

import dataclasses
import math
import os
import warnings

from resnext_tf import recipes
from resnext_tf.backend_ops import CONV_IMPLS
from resnext_tf.errors import check_choice
from resnext_tf.layers import BOTTLENECK_TYPES, SHORTCUT_TYPES
from resnext_tf.resnext import stage_blocks
from resnext_tf.training.optimizer import NO_DECAY_KINDS
from resnext_tf.training.schedules import LR_SCHEDULES

# Flag groups, in the order --help lists them.
GROUPS = ("model", "data", "optimization", "distribution", "checkpointing", "performance")
STRATEGIES = ("auto", "off", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
DTYPES = ("float32", "mixed_float16", "mixed_bfloat16")
# The weights that stand for a run with a weight EMA: the average, or the trained ones.
EXPORT_WEIGHTS = ("ema", "raw")
# Fields that take the recipe's value of the same name when left as None.
FROM_RECIPE = ("depth", "batch_size", "weight_decay", "epochs")
# Above this global batch, a linearly scaled LR without warmup draws a warning: Goyal et al.
# (2017) keep the batch-256 error up to batch 8k with the linear rule only thanks to 5 epochs
# of gradual warmup.
WARMUP_ADVISED_BATCH = 1024


def option(default, group, text, choices=None, low=None, high=None):
    """A TrainConfig field with its flag's description.

    Args:
        default: the field's default.
        group: one of GROUPS.
        text: the flag's help; `{name}` stands for the recipe's value of `name`.
        choices: allowed values (of each item, for a tuple field).
        low: smallest allowed value.
        high: values must stay below it (the flag accepts it, so the error names the rule).
    """
    metadata = dict(group=group, help=text, choices=choices, low=low, high=high)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class TrainConfig:
    """The options of a run; built by `flags.config_from_flags` or directly in Python."""

    dataset: str = option("cifar10", "data", "Dataset.", recipes.DATASETS)
    depth: int | None = option(
        None, "model", "Depth: 50, 101 or 152 (ImageNet stem), 9n+2 (CIFAR) (default: {depth})."
    )
    cardinality: int = option(1, "model", "Groups C of the grouped 3x3 convolutions.", low=1)
    base_width: int = option(
        64, "model", "Width d of a group in the first stage (ResNeXt-50 32x4d: 4).", low=1
    )
    bottleneck_type: str = option(
        "resnext_C", "model", "Grouped conv (C), branches (B), ResNet block.", BOTTLENECK_TYPES
    )
    shortcut_type: str = option(
        "B",
        "model",
        "A: zero-padded identity; B: projection where needed; C: always.",
        SHORTCUT_TYPES,
    )
    conv_impl: str = option(
        "auto", "model", "Grouped convolution (auto: backend_ops.resolve_conv_impl).", CONV_IMPLS
    )
    num_classes: int | None = option(
        None, "model", "Classifier outputs (default: {num_classes}); the new head's size.", low=1
    )
    sync_bn: bool = option(
        False, "distribution", "BN statistics of the global batch (the original's: per GPU)."
    )
    zero_init_residual: bool = option(
        False, "model", "Gamma 0 in each block's last BN (Goyal et al.; off in the original)."
    )

    data_dir: str | None = option(
        None,
        "data",
        "CIFAR python-version folder, ImageNet folder with train/ and val/, a TFDS data_dir, "
        "or 'synthetic'. Default: the TFDS folder.",
    )
    image_size: int | None = option(
        None, "data", "Model input side (default: {image_size}).", low=1
    )
    ten_crop: bool = option(False, "data", "ImageNet evaluation on 10 crops, logits summed.")
    max_image_pixels: int | None = option(
        None,
        "data",
        "ImageNet images with more pixels count as unreadable (default: ImageLimits').",
    )
    max_image_aspect: float | None = option(
        None, "data", "ImageNet images with a longer / shorter side ratio above this, too."
    )
    max_image_bytes: int | None = option(
        None, "data", "ImageNet files with more bytes count as unreadable (default: ImageLimits')."
    )

    batch_size: int | None = option(
        None, "optimization", "Global batch over all replicas (default: {batch_size}).", low=1
    )
    lr: float | None = option(
        None, "optimization", "Initial LR (default: {lr} * batch_size / {batch_size}).", low=0
    )
    momentum: float = option(recipes.MOMENTUM, "optimization", "SGD momentum.", low=0, high=1)
    weight_decay: float | None = option(
        None, "optimization", "Coupled L2 on every parameter (default: {weight_decay}).", low=0
    )
    nesterov: bool = option(recipes.NESTEROV, "optimization", "Nesterov momentum.")
    epochs: int | None = option(
        None, "optimization", "Epochs (default: {epochs}); CIFAR decays at fractions.", low=1
    )
    epoch_number: int = option(1, "optimization", "First epoch of a fresh run (1-based).", low=1)
    # numpy's legacy seeding (keras.utils.set_random_seed) takes [0, 2**32).
    seed: int = option(
        0, "optimization", "Seed of initialisation, shuffling and augmentation.", low=0, high=2**32
    )
    steps_per_epoch: int | None = option(
        None, "optimization", "Cap on the batches of an epoch (smoke runs).", low=1
    )
    train_steps: int | None = option(
        None, "optimization", "Stop after this many global steps (smoke runs).", low=1
    )
    lr_schedule: str = option(
        "step",
        "optimization",
        "step: the original's x0.1 ({step_decays}); cosine: to zero after the warmup.",
        LR_SCHEDULES,
    )
    warmup_epochs: float = option(
        0.0,
        "optimization",
        "Epochs of linear per-step warmup, fractions allowed, < epochs (0: none).",
        low=0,
    )
    label_smoothing: float = option(
        0.0, "optimization", "Label smoothing of the loss, in [0, 1).", low=0, high=1
    )
    no_weight_decay_on: tuple[str, ...] = option(
        (),
        "optimization",
        "Variables without weight decay: bn (gamma, beta), bias.",
        NO_DECAY_KINDS,
    )
    ema_decay: float = option(
        0.0,
        "optimization",
        "Decay of an EMA of the weights, validated, checkpointed, exported (0: off).",
        low=0,
        high=1,
    )
    ema_warmup: bool = option(
        True,
        "optimization",
        "Warm the EMA decay up: min(ema_decay, (1 + s) / (10 + s)) at optimizer step s.",
    )

    model_dir: str | None = option(
        None, "checkpointing", "Run folder (default: runs/<dataset>_resnext<depth>_<C>x<d>d)."
    )
    test_only: bool = option(False, "data", "Only evaluate and print ' * Results top1 top5'.")
    resume: str = option(
        "auto", "checkpointing", "auto: model_dir's latest checkpoint if any; none; or a folder."
    )
    overwrite: bool = option(
        False,
        "checkpointing",
        "With --resume=none or another run's folder: delete model_dir's checkpoints and logs "
        "first (else such a run is refused). Not in a command you rerun to resume.",
    )
    retrain: str | None = option(
        None, "checkpointing", "Weights of a fresh start: a run, .weights.h5, .keras, Torch file."
    )
    reset_classifier: bool = option(
        False, "model", "Replace the --retrain classifier by one of --num_classes outputs."
    )
    export_dir: str | None = option(None, "checkpointing", "Export a SavedModel here at the end.")
    export_weights: str = option(
        "ema",
        "checkpointing",
        "With --ema_decay, the run's result: the weights `best` follows and --export_dir exports.",
        EXPORT_WEIGHTS,
    )

    distribution_strategy: str = option(
        "auto",
        "distribution",
        "auto: multi_worker_mirrored with several TF_CONFIG workers, mirrored with several "
        "GPUs, else one_device; off: TensorFlow's default strategy.",
        STRATEGIES,
    )
    num_gpus: int = option(-1, "distribution", "GPUs to use (-1: all visible, 0: CPU).", low=-1)
    tpu: str | None = option(
        None, "distribution", "--distribution_strategy=tpu: 'local' on a TPU VM, or a name."
    )
    worker_timeout: int = option(
        60,
        "distribution",
        "Multi-worker: seconds within which a lost or unreachable worker (also at start-up) "
        "stops every other one with exit code 75, to be rerun.",
        low=1,
    )

    dtype: str = option(
        "float32", "performance", "Keras precision policy (mixed_float16 scales the loss).", DTYPES
    )
    jit_compile: bool = option(False, "performance", "XLA for the forward and backward pass.")
    deterministic: bool = option(
        False,
        "performance",
        "Deterministic ops and one inter-op thread: reruns repeat the weights.",
    )

    checkpoint_steps: int = option(
        0, "checkpointing", "Also checkpoint every this many steps (0: epoch ends only).", low=0
    )
    keep_checkpoints: int = option(
        5, "checkpointing", "Epoch checkpoints kept (0: all); latest and best always.", low=0
    )
    log_steps: int = option(10, "checkpointing", "Print a batch line every this many steps.", low=1)

    def __post_init__(self):
        # Resolved once: every later reader (data, schedules, model) takes this Recipe.
        self._recipe = recipe = recipes.recipe(self.dataset)
        for name in FROM_RECIPE:
            if getattr(self, name) is None:
                setattr(self, name, getattr(recipe, name))
        if self.model_dir is None:
            self.model_dir = os.path.join(
                "runs", f"{self.dataset}_resnext{self.depth}_{self.cardinality}x{self.base_width}d"
            )
        if isinstance(self.no_weight_decay_on, str):
            self.no_weight_decay_on = self.no_weight_decay_on.split(",")
        self.no_weight_decay_on = tuple(k.strip() for k in self.no_weight_decay_on if k.strip())
        scaled = self.lr is None
        if scaled:
            self.lr = recipe.scaled_lr(self.batch_size)
        self._validate()
        if scaled and self.batch_size > WARMUP_ADVISED_BATCH and not self.warmup_epochs:
            warnings.warn(
                f"batch_size={self.batch_size} with the linearly scaled lr={self.lr:g} and no "
                "warmup: large batches lose accuracy without a gradual warmup; consider "
                "--warmup_epochs=5 (Goyal et al. 2017).",
                stacklevel=3,
            )

    @property
    def recipe(self):
        """The dataset's Recipe."""
        return self._recipe

    @property
    def data_config(self):
        """The DataConfig of the run's input pipelines."""
        # Imported here: the resnext_tf.data package loads TensorFlow, which TorchSGD on the JAX
        # backend (resnext_tf.training.optimizer) must not need.
        from resnext_tf.data.config import DataConfig, ImageLimits

        limits = {
            "max_pixels": self.max_image_pixels,
            "max_aspect": self.max_image_aspect,
            "max_bytes": self.max_image_bytes,
        }
        return DataConfig(
            dataset=self.dataset,
            data_dir=self.data_dir,
            image_size=self.image_size,
            seed=self.seed,
            ten_crop=self.ten_crop,
            image_limits=ImageLimits(**{k: v for k, v in limits.items() if v is not None}),
        )

    def _validate(self):
        for field in dataclasses.fields(self):
            _check_field(field, getattr(self, field.name))
        stage_blocks(self.recipe.stem, self.depth)
        self.data_config  # noqa: B018  (DataConfig checks sizes, ten_crop and the image limits)
        if not 0.0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"warmup_epochs must be >= 0 and < epochs; received "
                f"warmup_epochs={self.warmup_epochs!r}, epochs={self.epochs!r}."
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


def _number(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_field(field, value):
    """Checks `value` against the choices and bounds of `field`'s metadata."""
    name, choices = field.name, field.metadata["choices"]
    low, high = field.metadata["low"], field.metadata["high"]
    if choices is not None:
        for item in value if isinstance(value, tuple) else (value,):
            check_choice(name, item, choices)
    # NaN passes every comparison below (all are False), and infinity is no rate or decay.
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; received {name}={value!r}.")
    if value is None or (low is None and high is None):
        return
    if high is not None and not low <= value < high:
        raise ValueError(
            f"{name} must be in [{_number(low)}, {_number(high)}); received {name}={value!r}."
        )
    if value < low:
        raise ValueError(f"{name} must be >= {_number(low)}; received {name}={value!r}.")
