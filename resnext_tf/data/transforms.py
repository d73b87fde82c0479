"""Transforms of the original recipe (fb.resnet.torch transforms), in TensorFlow.

Every random draw is stateless (the same seed of shape [2], the same output) and geometry
follows Torch's integer sizes and rounding. ImageNet training's colour work is one affine map
per image, drawn by `imagenet_train` and applied per batch by `apply_color` (docs/data.md,
"Transforms"). The evaluation transforms are in `resnext_tf.data.evaluation`.
"""

import tensorflow as tf

from resnext_tf.data.decode import DEFAULT_LIMITS, checked, decode_window, image_shape
from resnext_tf.recipes import RECIPES

# The recipes' ImageNet mean and std on [0, 1] RGB, and CIFAR's (mean, std) on 0-255 images.
IMAGENET_MEAN, IMAGENET_STD = RECIPES["imagenet"].mean, RECIPES["imagenet"].std
CIFAR_MEAN_STD = {name: (r.mean, r.std) for name, r in RECIPES.items() if r.stem == "cifar"}
# AlexNet PCA lighting noise: eigenvalues and eigenvector rows (docs/reference.md "Data", step 3).
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
# Grey level used by the saturation and contrast jitter (docs/reference.md "Data", step 2).
GREY_WEIGHTS = (0.299, 0.587, 0.114)
# Jitter coefficients (p, q, r) of p * x + q * grey(x) + r * mean(grey(x)) that leave x as it is.
NO_JITTER = (1.0, 0.0, 0.0)
# RandomSizedCrop tries this many windows before falling back to a centre crop (docs/reference.md).
CROP_TRIES = 10


def split_seed(seed, num):
    """Returns `num` independent seeds of shape [2] derived from `seed`."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def normalize(image, mean, std):
    """Returns (image - mean) / std per channel."""
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def random_flip(image, seed):
    """Mirrors `image` ([H, W, C]) left-right with probability 0.5."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    # cond reverses only the flipped images; tf.where would reverse every image, then select.
    return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def _round_half_up(x):
    # torch.round rounds halves away from zero; tf.round rounds them to even.
    return tf.cast(tf.floor(x + 0.5), tf.int32)


def sample_crop_window(height, width, seed, area_range, aspect_range):
    """Draws a RandomSizedCrop window for an image of the given size.

    Args:
        height, width: Image size (int32 scalar tensors).
        seed: Seed of shape [2].
        area_range: (low, high) fraction of the image area.
        aspect_range: (low, high) of width / height before the random swap.

    Returns:
        (offset_y, offset_x, crop_height, crop_width, found): int32 scalars and a bool that is
        False when all CROP_TRIES draws missed; the window is then the whole image.
    """
    area_seed, aspect_seed, swap_seed, offset_seed = split_seed(seed, 4)
    area = tf.cast(height * width, tf.float32)
    target = tf.random.stateless_uniform([CROP_TRIES], area_seed, *area_range) * area
    aspect = tf.random.stateless_uniform([CROP_TRIES], aspect_seed, *aspect_range)
    w = _round_half_up(tf.sqrt(target * aspect))
    h = _round_half_up(tf.sqrt(target / aspect))
    swap = tf.random.stateless_uniform([CROP_TRIES], swap_seed) < 0.5
    w, h = tf.where(swap, h, w), tf.where(swap, w, h)
    fits = (h <= height) & (w <= width) & (h >= 1) & (w >= 1)
    found = tf.reduce_any(fits)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    h = tf.where(found, h[first], height)
    w = tf.where(found, w[first], width)
    # Torch draws the offset uniformly from 0 .. size - crop (both ends included).
    u = tf.random.stateless_uniform([2], offset_seed)
    y = tf.minimum(tf.cast(u[0] * tf.cast(height - h + 1, tf.float32), tf.int32), height - h)
    x = tf.minimum(tf.cast(u[1] * tf.cast(width - w + 1, tf.float32), tf.int32), width - w)
    return y, x, h, w, found


def shorter_side_size(height, width, size):
    """(height, width) of Torch's Scale(size): the shorter side `size`, the other truncated."""
    height, width = tf.convert_to_tensor(height), tf.convert_to_tensor(width)
    size = tf.cast(size, height.dtype)
    tall = height > width
    new_h = tf.where(tall, height * size // width, size)
    new_w = tf.where(tall, size, width * size // height)
    return new_h, new_w


def resize(image, height, width, antialias):
    same = tf.reduce_all(tf.shape(image)[:2] == tf.stack([height, width]))
    return tf.cond(
        same,
        lambda: tf.cast(image, tf.float32),
        lambda: tf.image.resize(image, [height, width], method="bicubic", antialias=antialias),
    )


def center_crop(image, size):
    """Crops the central size x size window; offsets round up as in Torch's CenterCrop."""
    shape = tf.shape(image)
    y = (shape[0] - size + 1) // 2
    x = (shape[1] - size + 1) // 2
    return image[y : y + size, x : x + size]


def _jitter_maps(factors):
    """[3 ops, 3, 3]: brightness, contrast and saturation as linear maps of the coefficients
    (p, q, r) of p * x + q * grey(x) + r * mean(grey(x)) (the grey weights sum to 1)."""
    b, c, s = tf.unstack(factors)
    zero, one = tf.zeros_like(b), tf.ones_like(b)
    rows = [
        [[b, zero, zero], [zero, b, zero], [zero, zero, b]],
        [[c, zero, zero], [zero, c, zero], [1 - c, 1 - c, one]],
        [[s, zero, zero], [1 - s, one, zero], [zero, zero, one]],
    ]
    return tf.stack([tf.stack([tf.stack(row) for row in op]) for op in rows])


def sample_color_jitter(seed, strength):
    """Returns (factors, order): float32 [3] jitter factors 1 + U(-strength, strength) for
    brightness, contrast and saturation, and the int32 [3] order of the ops (order[k] goes k-th).
    """
    factor_seed, order_seed = split_seed(seed, 2)
    factors = 1.0 + tf.random.stateless_uniform([3], factor_seed, -strength, strength)
    order = tf.argsort(tf.random.stateless_uniform([3], order_seed))
    return factors, order


def jitter_coefficients(factors, order):
    """Returns float32 (p, q, r) of p * x + q * grey(x) + r * mean(grey(x)): fb.resnet.torch's
    ColorJitter blends composed in `order`, without clamping.
    """
    maps = _jitter_maps(factors)
    coefficients = tf.constant(NO_JITTER)
    for step in range(3):
        coefficients = tf.linalg.matvec(maps[order[step]], coefficients)
    return coefficients


def lighting_shift(seed, alphastd):
    """Returns AlexNet's PCA lighting offset of one image, float32 [3] added to every pixel:
    eigvec @ (alpha * eigval), alpha ~ N(0, alphastd) per component.
    """
    alpha = tf.random.stateless_normal([3], seed, stddev=alphastd)
    eigvec = tf.constant(PCA_EIGVEC, tf.float32)
    return tf.linalg.matvec(eigvec, alpha * tf.constant(PCA_EIGVAL, tf.float32))


def color_map(channel_mean, coefficients, shift):
    """The affine color map of one image: jitter, then lighting, then normalization.

    Exactly the recipe's steps on x / 255 for a 0-255 image x (docs/data.md, "Transforms").

    Args:
        channel_mean: float32 [3], the mean of each channel of the 0-255 image.
        coefficients: float32 [3], the jitter coefficients (p, q, r).
        shift: float32 [3], the lighting offset on the [0, 1] scale.

    Returns:
        float32 [4, 3]: rows 0-2 the matrix (input channel, output channel), row 3 the bias.
    """
    p, q, r = tf.unstack(coefficients)
    grey = tf.constant(GREY_WEIGHTS)
    mean, std = tf.constant(IMAGENET_MEAN), tf.constant(IMAGENET_STD)
    matrix = (p * tf.eye(3) + q * grey[:, None]) / (255.0 * std)
    mean_grey = tf.tensordot(channel_mean, grey, axes=1) / 255.0
    bias = (r * mean_grey + shift - mean) / std
    return tf.concat([matrix, bias[None]], axis=0)


def apply_color(images, color):
    """Returns float32 [b, H, W, 3] `images` @ matrix + bias, image by image, for [b, 4, 3]
    `color`, each image's `color_map`.
    """
    shape = tf.shape(images)
    pixels = tf.matmul(tf.reshape(images, [shape[0], -1, 3]), color[:, :3])
    # The bias tiled over rows of W * 3 values beats broadcasting it per pixel (performance.md).
    rows = tf.reshape(pixels, [shape[0], shape[1], -1])
    rows += tf.tile(color[:, 3], [1, shape[2]])[:, None]
    return tf.reshape(rows, shape)


def imagenet_train(data, seed, cfg, limits=DEFAULT_LIMITS):
    """The per-image part of the ImageNet training transform of an encoded image.

    Crops a RandomSizedCrop window, resizes and flips it, and draws its colour map;
    `apply_color` on a batch completes the transform.

    Args:
        data: Encoded image bytes (scalar string tensor).
        seed: Seed of shape [2] for all the draws of this image.
        cfg: DataConfig.
        limits: ImageLimits; an image over them raises InvalidArgumentError undecoded.

    Returns:
        (image, color): float32 [size, size, 3] on the 0-255 scale (bicubic may overshoot
        it), and the image's float32 [4, 3] color_map.
    """
    data = checked(data, limits)
    size = cfg.crop_size
    crop_seed, jitter_seed, light_seed, flip_seed = split_seed(seed, 4)
    height, width = tf.unstack(image_shape(data))
    y, x, h, w, found = sample_crop_window(
        height, width, crop_seed, cfg.crop_area_range, cfg.aspect_range
    )
    image = decode_window(data, y, x, h, w, cfg.fused_crop)
    # The fallback resizes the shorter side and crops the centre (a no-op for a found window).
    out_h, out_w = shorter_side_size(h, w, size)
    image = resize(image, tf.where(found, size, out_h), tf.where(found, size, out_w), cfg.antialias)
    image = tf.ensure_shape(center_crop(image, size), [size, size, 3])
    coefficients = tf.constant(NO_JITTER)
    if cfg.color_jitter > 0:
        coefficients = jitter_coefficients(*sample_color_jitter(jitter_seed, cfg.color_jitter))
    shift = lighting_shift(light_seed, cfg.lighting) if cfg.lighting > 0 else tf.zeros([3])
    color = color_map(tf.reduce_mean(image, axis=[0, 1]), coefficients, shift)
    return (random_flip(image, flip_seed) if cfg.flip else image), color


def cifar_train(image, seed, cfg):
    """CIFAR training transform of a uint8 [32, 32, 3] image: normalize, flip, pad, crop."""
    flip_seed, crop_seed = split_seed(seed, 2)
    image = cifar_eval(image, cfg.dataset)
    if cfg.flip:
        image = random_flip(image, flip_seed)
    if cfg.pad_crop == 0:
        return image
    pad = cfg.pad_crop
    # Zero padding after normalizing pads with the dataset mean, as in the original.
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    offset = tf.random.stateless_uniform([2], crop_seed, 0, 2 * pad + 1, dtype=tf.int32)
    return tf.slice(image, tf.concat([offset, [0]], 0), [32, 32, 3])


def cifar_eval(image, dataset):
    """CIFAR evaluation transform: normalize the 0-255 image with `dataset`'s mean/std."""
    return normalize(tf.cast(image, tf.float32), *CIFAR_MEAN_STD[dataset])
