"""Configuration and summary types of the input pipelines."""

import dataclasses
import os
from typing import NamedTuple

from resnext_tf.recipes import recipe

SPLITS = ("train", "eval")
# data_dir value that selects generated images instead of files.
SYNTHETIC = "synthetic"
# File names taken for images (any case), by training folders and by predict alike: the
# formats resnext_tf.data.decode reads.
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".gif", ".bmp", ".webp")


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    """What an encoded image may ask of the decoder; larger ones are refused undecoded.

    Attributes:
        max_pixels: Width x height, and for a GIF the pixels of all its frames together (the
            GIF reader holds every frame, not only the first one used). The default is PIL's
            Image.MAX_IMAGE_PIXELS, above which PIL warns of a decompression bomb.
        max_aspect: Longer side / shorter side. The transforms keep their memory bounded at
            any aspect ratio (see `resized_crops`); the limit refuses degenerate strips, of
            which the centre crop would see at most 1 / max_aspect. 50 is well beyond
            panoramas and banner formats (up to about 12:1).
        max_bytes: Length of the encoded bytes; bounds the parsing work before the decode.
    """

    max_pixels: int = 89_478_485
    max_aspect: float = 50.0
    max_bytes: int = 64 * 2**20

    def __post_init__(self):
        for name in ("max_pixels", "max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; received {name}={value!r}.")
        if not self.max_aspect >= 1:
            raise ValueError(f"max_aspect must be >= 1; received max_aspect={self.max_aspect!r}.")


class DatasetSpec(NamedTuple):
    """What a model and a trainer need to know about a dataset, without reading images."""

    num_classes: int
    num_train: int
    num_eval: int
    image_shape: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Input pipeline options; the defaults are the original recipe (docs/reference.md "Data").

    Attributes:
        dataset: a dataset of resnext_tf.recipes: "cifar10", "cifar100" or "imagenet".
        data_dir: None (TFDS default folder), a path (CIFAR python-version folder or .tar.gz,
            ImageNet train/ val/ folders, or a TFDS data_dir) or "synthetic". CIFAR files under
            the official names must have the official MD5 (resnext_tf.data.cifar explains).
        image_size: Side of the square model input; None: the recipe's.
        eval_resize: ImageNet evaluation resizes the shorter side to this before the centre crop;
            None: the recipe's ratio to the crop (`Recipe.eval_resize_for`).
        seed: Seed of the shuffling order and of every augmentation draw.
        cache: Keep the evaluation split's preprocessed examples in memory after the first pass.
        ten_crop: ImageNet evaluation yields 10 crops per image ([b, 10, H, W, 3]).
        crop_area_range: ImageNet RandomSizedCrop area fraction range.
        aspect_range: ImageNet RandomSizedCrop aspect ratio (w/h) range.
        color_jitter: Brightness, contrast and saturation strength (0 disables).
        lighting: Standard deviation of the PCA lighting noise (0 disables).
        flip: Random horizontal flips with probability 0.5.
        pad_crop: CIFAR zero padding before the random 32x32 crop (0 disables the crop).
        fused_crop: Decode only the ImageNet train crop window from the JPEG
            (tf.image.decode_and_crop_jpeg) instead of the whole image.
        antialias: Low-pass filter when downscaling (as PIL does). The original's Torch
            image.scale interpolates without it.
        image_limits: ImageLimits of the ImageNet decode; an image over them is replaced like an
            unreadable file, with a warning naming it and the reason.
    """

    dataset: str
    data_dir: str | None = None
    image_size: int | None = None
    eval_resize: int | None = None
    seed: int = 0
    cache: bool = False
    ten_crop: bool = False
    crop_area_range: tuple[float, float] = (0.08, 1.0)
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
    color_jitter: float = 0.4
    lighting: float = 0.1
    flip: bool = True
    pad_crop: int = 4
    fused_crop: bool = True
    antialias: bool = False
    image_limits: ImageLimits = ImageLimits()

    def __post_init__(self):
        object.__setattr__(self, "_recipe", recipe(self.dataset))  # resolved once
        if self.eval_resize is None:
            object.__setattr__(self, "eval_resize", self.recipe.eval_resize_for(self.crop_size))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", os.fspath(self.data_dir))
        # Flags may hand over lists; tuples keep the config hashable.
        for name in ("crop_area_range", "aspect_range"):
            low, high = (float(v) for v in getattr(self, name))
            if not 0 < low <= high:
                raise ValueError(
                    f"{name} must satisfy 0 < low <= high; received {name}={(low, high)!r}."
                )
            object.__setattr__(self, name, (low, high))
        if self.crop_area_range[1] > 1:
            raise ValueError(
                f"crop_area_range is a fraction of the image area; received "
                f"crop_area_range={self.crop_area_range!r}; expected values in (0, 1]."
            )
        for name in ("color_jitter", "lighting", "pad_crop"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; received {name}={getattr(self, name)!r}.")
        self._check_sizes()

    def _check_sizes(self):
        size = self.crop_size
        native = self.recipe.image_size
        if self.is_cifar and size != native:
            raise ValueError(
                f"CIFAR images are {native}x{native}; received image_size={self.image_size!r}; "
                f"expected None or {native}."
            )
        if self.is_cifar and self.ten_crop:
            raise ValueError(
                "ten_crop is an ImageNet evaluation; received ten_crop=True with "
                f"dataset={self.dataset!r}."
            )
        if size < 1 or self.eval_resize < size:
            raise ValueError(
                "Expected 1 <= image_size <= eval_resize; received "
                f"image_size={size}, eval_resize={self.eval_resize}."
            )

    @property
    def recipe(self):
        """The dataset's Recipe."""
        return self._recipe

    @property
    def is_cifar(self) -> bool:
        """Whether the images are CIFAR's: in memory, fixed size, the CIFAR transforms."""
        return self.recipe.stem == "cifar"

    @property
    def crop_size(self) -> int:
        """The side of the square images the pipeline yields."""
        return self.recipe.image_size if self.image_size is None else int(self.image_size)
