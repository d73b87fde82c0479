"""The evaluation transform of training, serving and prediction, and the one ten-crop rule.

Every encoded image is checked against its `ImageLimits` before it is decoded
(`resnext_tf.data.decode`).
"""

import tensorflow as tf

from resnext_tf.data import decode as decoding
from resnext_tf.data import transforms
from resnext_tf.data.config import DataConfig


def _crop_corners(height, width, size, ten_crop):
    """Top-left corners of the centre crop (rounded up, as Torch's), or of the ten-crop five."""
    centre = ((height - size + 1) // 2, (width - size + 1) // 2)
    if not ten_crop:
        return [centre]
    bottom, right = height - size, width - size
    return [(0, 0), (0, right), (bottom, 0), (bottom, right), centre]


def imagenet_eval(data, cfg, limits=None):
    """ImageNet evaluation transform of an encoded image: shorter side to cfg.eval_resize,
    centre (or, with cfg.ten_crop, ten) crops of cfg.crop_size, normalization.

    Args:
      data: Encoded image bytes (scalar string tensor).
      cfg: DataConfig (crop_size, eval_resize, antialias, ten_crop).
      limits: ImageLimits (decode.DEFAULT_LIMITS by default); an image over them raises
        InvalidArgumentError.

    Returns:
      float32 [size, size, 3], or [10, size, size, 3] with cfg.ten_crop.
    """
    size = cfg.crop_size
    image = decoding.decode(decoding.checked(data, limits or decoding.DEFAULT_LIMITS))
    height, width = tf.unstack(tf.shape(image)[:2])
    height, width = transforms.shorter_side_size(height, width, cfg.eval_resize)
    image = transforms.resize(image, height, width, cfg.antialias)
    corners = _crop_corners(height, width, size, cfg.ten_crop)
    crops = tf.ensure_shape(
        tf.stack([image[y : y + size, x : x + size] for y, x in corners]),
        [len(corners), size, size, 3],
    )
    if cfg.ten_crop:
        crops = tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)
    image = crops if cfg.ten_crop else crops[0]
    return transforms.normalize(image / 255.0, transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)


def cifar_eval(data, dataset, size, antialias=False, limits=None):
    """CIFAR evaluation transform of an encoded image: resized to size x size where it differs,
    normalized with `dataset`'s mean and std."""
    image = decoding.decode(decoding.checked(data, limits or decoding.DEFAULT_LIMITS))
    return transforms.cifar_eval(transforms.resize(image, size, size, antialias), dataset)


def eval_transform(contract, limits=None, ten_crop=False):
    """The per-image evaluation transform of a `DataContract`: encoded bytes -> float32
    [size, size, 3] ([10, size, size, 3] with ten_crop).

    Raises:
      ValueError: for ten_crop with a CIFAR contract.
    """
    size = contract.image_size
    if contract.is_cifar:
        if ten_crop:
            raise ValueError(
                f"ten_crop is an ImageNet evaluation; received ten_crop=True with "
                f"dataset={contract.dataset!r}."
            )
        return lambda data: cifar_eval(data, contract.dataset, size, contract.antialias, limits)
    cfg = DataConfig(
        contract.dataset,
        image_size=size,
        eval_resize=contract.eval_resize,
        antialias=contract.antialias,
        ten_crop=ten_crop,
    )
    return lambda data: imagenet_eval(data, cfg, limits)


def combine_crops(logits):
    """The logits of images from their crops' logits [batch, crops, classes]: the mean, whose
    ranking is the original's (tenCrop sums the crops' outputs)."""
    return tf.reduce_mean(tf.cast(logits, tf.float32), axis=1)
