"""Transforms of the original recipe (fb.resnet.torch transforms), in TensorFlow.

Every random draw is stateless: a transform takes a seed of shape [2] and gives the same
output for the same seed. Geometry follows Torch: integer sizes are truncated, centre crops
start at ceil((size - crop) / 2), RandomSizedCrop rounds half away from zero.

The ImageNet training color work (jitter, lighting, normalization) is linear in the pixel
values once an image's random draws and mean grey level are known, and the original clamps
nowhere in between; so each image gets one affine color map (3x3 matrix and bias), drawn in
`imagenet_train`, and `apply_color` applies the maps of a whole batch in one pass.

Encoded images are checked against `ImageLimits` from their header before anything decodes
them (`check_image`), and the evaluation crop of a wide image is computed from the source
window it depends on (`resized_crops`), so an image's memory does not grow with its aspect
ratio.
"""

import tensorflow as tf

# ImageLimits is defined with the other pure configuration; the transforms apply it.
from resnext_tf.data.config import ImageLimits
from resnext_tf.recipes import RECIPES, recipe

# ImageNet channel mean and std on [0, 1] RGB images, and CIFAR's (mean, std) on 0-255 images,
# from the recipes.
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
# libjpeg's accurate integer IDCT, the default of Torch's image.load and of PIL; TF's own
# default (fast IDCT) differs from them by up to 4 levels.
JPEG_DCT = "INTEGER_ACCURATE"
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
        height: Image height (int32 scalar tensor).
        width: Image width (int32 scalar tensor).
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
    """Returns the (height, width) that Torch's Scale(size) resizes an image to.

    The shorter side becomes `size`, the longer one keeps the aspect ratio, truncated.
    """
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
    """The linear map each jitter op applies to the coefficients (p, q, r) of an image
    written as p * x + q * grey(x) + r * mean(grey(x)); [3 ops, 3, 3] for brightness,
    contrast, saturation.

    Grey weights sum to 1, so grey(grey(x)) = grey(x) and grey(constant) = constant:
    brightness b scales (p, q, r); contrast c blends with mean grey = (p + q + r) * mean(grey(x));
    saturation s blends with grey = (p + q) * grey(x) + r * mean(grey(x)).
    """
    b, c, s = tf.unstack(factors)
    zero, one = tf.zeros_like(b), tf.ones_like(b)
    rows = [
        [[b, zero, zero], [zero, b, zero], [zero, zero, b]],
        [[c, zero, zero], [zero, c, zero], [1 - c, 1 - c, one]],
        [[s, zero, zero], [1 - s, one, zero], [zero, zero, one]],
    ]
    return tf.stack([tf.stack([tf.stack(row) for row in op]) for op in rows])


def sample_color_jitter(seed, strength):
    """Draws the jitter factors 1 + U(-strength, strength) and a random order of the 3 ops.

    Returns:
        (factors, order): float32 [3] for brightness, contrast, saturation and an int32 [3]
        permutation; order[k] is the op applied k-th.
    """
    factor_seed, order_seed = split_seed(seed, 2)
    factors = 1.0 + tf.random.stateless_uniform([3], factor_seed, -strength, strength)
    order = tf.argsort(tf.random.stateless_uniform([3], order_seed))
    return factors, order


def jitter_coefficients(factors, order):
    """Composes brightness, contrast and saturation blends applied in `order`, without clamping.

    Brightness blends with black, contrast with the mean grey level, saturation with the grey
    image (fb.resnet.torch ColorJitter). All three are linear, so their composition maps an
    image x to p * x + q * grey(x) + r * mean(grey(x)).

    Returns:
        float32 [3]: the coefficients (p, q, r).
    """
    maps = _jitter_maps(factors)
    coefficients = tf.constant(NO_JITTER)
    for step in range(3):
        coefficients = tf.linalg.matvec(maps[order[step]], coefficients)
    return coefficients


def lighting_shift(seed, alphastd):
    """AlexNet PCA noise eigvec @ (alpha * eigval), alpha ~ N(0, alphastd) per component.

    Returns:
        float32 [3]: the RGB offset added to every pixel of the image.
    """
    alpha = tf.random.stateless_normal([3], seed, stddev=alphastd)
    eigvec = tf.constant(PCA_EIGVEC, tf.float32)
    return tf.linalg.matvec(eigvec, alpha * tf.constant(PCA_EIGVAL, tf.float32))


def color_map(channel_mean, coefficients, shift):
    """The affine color map of one image: jitter, then lighting, then normalization.

    For a 0-255 image x and u = x / 255, the training recipe computes per pixel
    (p * u + q * grey(u) + r * mean(grey(u)) + shift - MEAN) / STD, grey(u) = u @ GREY_WEIGHTS,
    with no clamping between the steps (docs/reference.md "Data"). As mean(grey(u)) =
    channel_mean @ GREY_WEIGHTS / 255, this is x @ matrix + bias, exactly.

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
    """Applies per-image color maps to a batch.

    Args:
        images: float32 [b, H, W, 3].
        color: float32 [b, 4, 3], each image's color_map.

    Returns:
        float32 [b, H, W, 3]: images @ matrix + bias, image by image.
    """
    shape = tf.shape(images)
    pixels = tf.matmul(tf.reshape(images, [shape[0], -1, 3]), color[:, :3])
    # Adding the bias to rows of W * 3 values (the bias tiled W times) runs about twice as
    # fast as broadcasting a 3-vector over every pixel.
    rows = tf.reshape(pixels, [shape[0], shape[1], -1])
    rows += tf.tile(color[:, 3], [1, shape[2]])[:, None]
    return tf.reshape(rows, shape)


# ---------------------------------------------------------------------------------------------
# Limits on encoded images, checked from the header before anything is decoded.


DEFAULT_LIMITS = ImageLimits()
# Formats read by `decode`, in the order TensorFlow's decoder tells them apart by their first
# bytes. JPEG XL, which TensorFlow also decodes, is refused: its header is not parsed here.
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WebP")
# GIF blocks walked to find the frames; a step skips up to GIF_RUN full data sub-blocks.
GIF_MAX_STEPS = 4096
GIF_RUN = 1024
_HEAD = 32  # header bytes read for the dimensions


def _head(data):
    """The first _HEAD bytes of `data` as int64 [_HEAD], zero-padded."""
    head = tf.io.decode_raw(tf.strings.substr(data, 0, _HEAD), tf.uint8)
    return tf.pad(tf.cast(head, tf.int64), [[0, _HEAD - tf.size(head)]])


def image_format(data):
    """Index in FORMATS + 1 of the format of `data` by its first bytes; 0 for any other."""
    padded = tf.strings.join([tf.strings.substr(data, 0, 16), b"\0" * 16])

    def starts(offset, magic):
        return tf.equal(tf.strings.substr(padded, offset, len(magic)), magic)

    webp = starts(0, b"RIFF") & starts(8, b"WEBP") & (tf.strings.length(data) > 12)
    found = tf.stack(
        [starts(0, b"\xff\xd8\xff"), starts(0, b"\x89PNG\r\n\x1a\n"), starts(0, b"GIF8"),
         starts(0, b"BM"), webp]
    )  # fmt: skip
    first = tf.argmax(tf.cast(found, tf.int32), output_type=tf.int32)
    return tf.where(tf.reduce_any(found), first + 1, 0)


def _le(head, offset, count):
    """Unsigned little-endian integer of `count` bytes at `offset`."""
    return sum(head[offset + k] * 256**k for k in range(count))


def _be(head, offset, count):
    return sum(head[offset + k] * 256 ** (count - 1 - k) for k in range(count))


def _color_table_bytes(flags):
    """Bytes of the color table that a GIF flags byte announces."""
    flags = tf.maximum(flags, 0)
    return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), flags % 8), 0)


def _gif_frame_pixels(data):
    """(pixels of all the frames of a GIF, whether its blocks were walked to the end).

    giflib reads a whole GIF (DGifSlurp) before TensorFlow takes its first frame, allocating
    every frame's pixels, and LZW data can encode a large frame in few bytes. The frames are
    found by walking the blocks; a step reads one block or sub-block, or skips up to GIF_RUN
    full (255-byte) data sub-blocks at once. Walking stops at the trailer, at a byte that
    starts no block, at the end of the data, or after GIF_MAX_STEPS steps.
    """
    raw = tf.io.decode_raw(data, tf.uint8)
    n = tf.size(raw, out_type=tf.int64)

    def byte(i):
        i = tf.cast(i, tf.int64)
        value = tf.cast(tf.gather(raw, tf.clip_by_value(i, 0, n - 1)), tf.int64)
        return tf.where((i >= 0) & (i < n), value, -1)

    def sub_blocks(pos, pixels):
        at = pos + 256 * tf.range(GIF_RUN, dtype=tf.int64)
        full = tf.equal(byte(at), 255)
        run = tf.reduce_sum(tf.math.cumprod(tf.cast(full, tf.int64)))
        pos = pos + 256 * run
        size = byte(pos)
        more = (run == GIF_RUN) | (size > 0)
        next_pos = tf.where(run == GIF_RUN, pos, pos + tf.maximum(size, 0) + 1)
        return next_pos, more, pixels, size < 0

    def block(pos, pixels):
        kind = byte(pos)
        image, extension = tf.equal(kind, 0x2C), tf.equal(kind, 0x21)
        width = tf.maximum(byte(pos + 5), 0) + 256 * tf.maximum(byte(pos + 6), 0)
        height = tf.maximum(byte(pos + 7), 0) + 256 * tf.maximum(byte(pos + 8), 0)
        # Image: descriptor (10 bytes), local color table, LZW code size, then sub-blocks.
        # Extension: introducer and label, then sub-blocks.
        next_pos = tf.where(image, pos + 11 + _color_table_bytes(byte(pos + 9)), pos + 2)
        pixels += tf.where(image, width * height, 0)
        return next_pos, image | extension, pixels, ~(image | extension)

    def step(pos, in_sub_blocks, pixels, steps, done):
        pos, in_sub_blocks, pixels, done = tf.cond(
            in_sub_blocks, lambda: sub_blocks(pos, pixels), lambda: block(pos, pixels)
        )
        return pos, in_sub_blocks, pixels, steps + 1, done

    start = 13 + _color_table_bytes(byte(10))
    zero = tf.constant(0, tf.int64)
    _, _, pixels, _, done = tf.while_loop(
        lambda pos, in_sub_blocks, pixels, steps, done: ~done & (steps < GIF_MAX_STEPS),
        step,
        (start, tf.constant(False), zero, zero, tf.constant(False)),
    )
    return pixels, done


def image_header(data):
    """Reads the size of an encoded image from its header, without decoding it.

    Returns:
        (format, height, width, frame_pixels, walked): format as in `image_format` (int32),
        height and width int64 (0 for an unknown format), the pixels the decoder holds at once
        (float64; a GIF's frames together, see `_gif_frame_pixels`), and False when a GIF's
        blocks were not walked to the end.

    Raises:
        InvalidArgumentError: a JPEG whose header libjpeg cannot read.
    """
    fmt = image_format(data)
    head = _head(data)

    def dims(height, width):
        height, width = tf.cast(height, tf.int64), tf.cast(width, tf.int64)
        pixels = tf.cast(height, tf.float64) * tf.cast(width, tf.float64)
        return height, width, pixels, tf.constant(True)

    def jpeg():
        shape = tf.io.extract_jpeg_shape(data)
        return dims(shape[0], shape[1])

    def png():  # IHDR: big-endian width, height
        return dims(_be(head, 20, 4), _be(head, 16, 4))

    def gif():  # logical screen: little-endian width, height; then the frames
        height, width, _, _ = dims(_le(head, 8, 2), _le(head, 6, 2))
        pixels, walked = _gif_frame_pixels(data)
        return height, width, tf.cast(pixels, tf.float64), walked

    def bmp():  # BITMAPINFOHEADER: signed little-endian width, height (negative: top-down)
        def signed(value):
            return tf.where(value >= 2**31, value - 2**32, value)

        return dims(tf.abs(signed(_le(head, 22, 4))), signed(_le(head, 18, 4)))

    def webp():  # the first chunk: lossy VP8, lossless VP8L or extended VP8X
        chunk = _be(head, 12, 4)
        bits = _le(head, 21, 4)
        lossless = (bits // 2**14 % 2**14 + 1, bits % 2**14 + 1)
        lossy = (_le(head, 28, 2) % 2**14, _le(head, 26, 2) % 2**14)
        extended = (_le(head, 27, 3) + 1, _le(head, 24, 3) + 1)
        sizes = {0x56503820: lossy, 0x5650384C: lossless, 0x56503858: extended}
        height, width = tf.constant(0, tf.int64), tf.constant(0, tf.int64)
        for code, (h, w) in sizes.items():
            height, width = tf.where(chunk == code, h, height), tf.where(chunk == code, w, width)
        return dims(height, width)

    def unknown():
        return dims(0, 0)

    height, width, pixels, walked = tf.switch_case(fmt, [unknown, jpeg, png, gif, bmp, webp])
    return fmt, height, width, pixels, walked


def _formatted(number):
    return f"{number:g}" if isinstance(number, float) else str(number)


def check_image(data, limits=DEFAULT_LIMITS):
    """Why an encoded image is refused before decoding, or "" when it is accepted.

    Reads only the length and the header (and a GIF's block structure): empty data, more
    than limits.max_bytes, a format other than FORMATS, no pixels, more than
    limits.max_pixels or an aspect ratio over limits.max_aspect. Sizes are width x height.

    Raises:
        InvalidArgumentError: a JPEG whose header libjpeg cannot read.
    """
    length = tf.strings.length(data)
    max_pixels, max_aspect = _formatted(limits.max_pixels), _formatted(limits.max_aspect)

    def header_reason():
        fmt, height, width, frame_pixels, walked = image_header(data)
        longer = tf.cast(tf.maximum(height, width), tf.float64)
        shorter = tf.cast(tf.minimum(height, width), tf.float64)
        failed = [
            tf.equal(fmt, 0),
            shorter < 1,
            longer * shorter > limits.max_pixels,
            longer > limits.max_aspect * shorter,
            ~walked,
            frame_pixels > limits.max_pixels,
        ]

        def describe():  # the strings are built only for a refused image
            size = tf.strings.join([tf.strings.as_string(width), "x", tf.strings.as_string(height)])
            messages = [
                tf.constant(f"is not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} image"),
                tf.strings.join(["has no pixels (", size, " in its header)"]),
                tf.strings.join([size, f" pixels exceed the pixel limit {max_pixels}"]),
                tf.strings.join([size, f" pixels exceed the aspect-ratio limit {max_aspect}"]),
                tf.constant(f"GIF has more than {GIF_MAX_STEPS} blocks"),
                tf.strings.join(
                    [
                        "GIF frames hold ",
                        tf.strings.as_string(tf.cast(frame_pixels, tf.int64)),
                        f" pixels in all, over the pixel limit {max_pixels}",
                    ]
                ),
            ]
            first = tf.argmax(tf.cast(tf.stack(failed), tf.int32))
            return tf.gather(tf.stack(messages), first)

        return tf.cond(tf.reduce_any(tf.stack(failed)), describe, lambda: tf.constant(""))

    return tf.cond(
        tf.equal(length, 0),
        lambda: tf.constant("is empty (0 bytes)"),
        lambda: tf.cond(
            length > limits.max_bytes,
            lambda: tf.strings.join(
                [tf.strings.as_string(length), f" bytes exceed the size limit {limits.max_bytes}"]
            ),
            header_reason,
        ),
    )


def checked(data, limits=DEFAULT_LIMITS):
    """`data`, once `check_image` accepts it; raises InvalidArgumentError with the reason."""
    reason = check_image(data, limits)
    with tf.control_dependencies([tf.debugging.Assert(tf.equal(reason, ""), [reason])]):
        return tf.identity(data)


def image_shape(data):
    """Returns the (height, width) of an encoded image as int32 [2], read from its header."""
    _, height, width, _, _ = image_header(data)
    return tf.cast(tf.stack([height, width]), tf.int32)


def decode(data):
    """Decodes a JPEG (grey and CMYK included), PNG, GIF, BMP or WebP to uint8 [H, W, 3]."""
    return tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method=JPEG_DCT),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )


def decode_window(data, y, x, h, w, fused):
    """Decodes the window [y:y+h, x:x+w] of an encoded image.

    With `fused`, JPEGs decode only the window (libjpeg skips the rest); other formats
    always decode fully and are cropped.
    """

    def crop_full():
        return decode(data)[y : y + h, x : x + w]

    if not fused:
        return crop_full()
    return tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.image.decode_and_crop_jpeg(
            data, tf.stack([y, x, h, w]), channels=3, dct_method=JPEG_DCT
        ),
        crop_full,
    )


# ---------------------------------------------------------------------------------------------
# The evaluation resize and crop, computed from the source pixels the crop depends on.

# TensorFlow's ResizeBicubic reads Keys' cubic (a = -0.5) weights from a table of this many
# steps per pixel; `_bicubic_taps` reads the same table, so its results are TensorFlow's.
_TABLE_STEPS = 1024
# A JPEG window is decoded this many pixels (one MCU) wider on each side than the pixels it is
# read for: at a window's edge, libjpeg upsamples subsampled chroma from fewer neighbours.
JPEG_WINDOW_MARGIN = 16
# `resized_crops` resizes the whole image when the result has at most this many times
# shorter**2 pixels: one fused op is faster than the crop window's gathers, and 4 * 256**2
# float32 pixels are 3 MB. Wider images take the crop window.
WHOLE_RESIZE_RATIO = 4


def eval_resize_size(crop_size):
    """The shorter side the ImageNet evaluation resizes to for a crop_size crop (the recipe's
    ratio, `Recipe.eval_resize_for`: 256 for 224)."""
    return recipe("imagenet").eval_resize_for(crop_size)


def _keys_table():
    """ResizeBicubic's weight table: Keys' cubic at distances i / steps and 1 + i / steps,
    computed in float64 and stored in float32 as TensorFlow does."""
    a = -0.5
    x = tf.range(_TABLE_STEPS + 1, dtype=tf.float64) / _TABLE_STEPS
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    x += 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return tf.cast(near, tf.float32), tf.cast(far, tf.float32)


def _bicubic_taps(in_size, out_size, start, count):
    """The source indices and weights of outputs start .. start + count - 1 of TensorFlow's
    bicubic resize (half-pixel centres, no antialias) of in_size pixels to out_size.

    The same float32 steps as ResizeBicubic: the sample position, its table step, the taps
    outside the image set to 0 and the four weights scaled to sum to 1.

    Returns:
        (indices int64 [count, 4] clipped to the image, weights float32 [count, 4]).
    """
    scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
    position = (tf.cast(tf.range(start, start + count), tf.float32) + 0.5) * scale - 0.5
    base = tf.floor(position)
    step = tf.cast(tf.round((position - base) * _TABLE_STEPS), tf.int32)  # lrintf: half even
    near, far = _keys_table()
    weights = tf.stack(
        [
            tf.gather(far, step),
            tf.gather(near, step),
            tf.gather(near, _TABLE_STEPS - step),
            tf.gather(far, _TABLE_STEPS - step),
        ],
        axis=1,
    )
    indices = tf.cast(base, tf.int64)[:, None] + tf.range(-1, 3, dtype=tf.int64)
    weights = tf.where((indices >= 0) & (indices < in_size), weights, 0.0)
    total = weights[:, 0] + weights[:, 1] + weights[:, 2] + weights[:, 3]
    weights *= (1.0 / total)[:, None]
    return tf.clip_by_value(indices, 0, in_size - 1), weights


def _antialias_span(in_size, out_size, start, count):
    """(first, last) source index that outputs start .. start + count - 1 of an antialiased
    Keys cubic resize (tf.image.resize antialias=True) read, with one pixel to spare."""
    inverse = tf.cast(in_size, tf.float64) / tf.cast(out_size, tf.float64)
    reach = 2.0 * tf.maximum(inverse, 1.0) + 0.5  # kernel radius 2, widened when shrinking
    first = tf.floor((tf.cast(start, tf.float64) + 0.5) * inverse - reach) - 1
    last = tf.math.ceil((tf.cast(start + count, tf.float64) - 0.5) * inverse + reach) + 1
    first = tf.clip_by_value(tf.cast(first, tf.int64), 0, in_size - 1)
    return first, tf.clip_by_value(tf.cast(last, tf.int64), 0, in_size - 1)


def _taps(source, resized, corner, size):
    """The `_bicubic_taps` of the rows and of the columns of a size x size crop."""
    return tuple(_bicubic_taps(source[k], resized[k], corner[k], size) for k in (0, 1))


def _resample(window, origin, source, resized, corner, size, antialias, taps=None):
    """The size x size crop at `corner` of the bicubic resize of a `source`-sized image to
    `resized`, computed from `window`, its pixels from `origin` on.

    Without antialias it gathers the 4 x 4 taps of each output and weighs them as
    ResizeBicubic does (down the 4 rows first, then across the 4 columns, adding in the same
    order), so it returns TensorFlow's own values; with antialias,
    tf.raw_ops.ScaleAndTranslate with the scale of the full resize and the window's offset, as
    tf.image.resize uses.
    """
    if antialias:
        scale = tf.cast(tf.stack(resized), tf.float32) / tf.cast(tf.stack(source), tf.float32)
        shift = tf.cast(tf.stack(origin), tf.float32) * scale - tf.cast(
            tf.stack(corner), tf.float32
        )
        out = tf.raw_ops.ScaleAndTranslate(
            images=window[None],
            size=[size, size],
            scale=scale,
            translation=shift,
            kernel_type="keyscubic",
            antialias=True,
        )
        return out[0]
    if taps is None:
        taps = _taps(source, resized, corner, size)
    (rows, row_weights), (cols, col_weights) = taps
    # The columns that any output reads (at most 4 * size), each once. The 4 taps lead each
    # gather's shape, so each weighted term is a contiguous slice.
    columns, tap_of = tf.unique(tf.reshape(cols - origin[1], [-1]))
    window = tf.gather(window, columns, axis=1)
    taps = tf.cast(tf.gather(window, tf.transpose(rows - origin[0])), tf.float32)
    wy = tf.transpose(row_weights)[:, :, None, None]  # [4, size, 1, 1]
    by_row = taps[0] * wy[0] + taps[1] * wy[1] + taps[2] * wy[2] + taps[3] * wy[3]
    # by_row: [size rows, columns, C]; across the columns, on its transpose.
    taps = tf.gather(tf.transpose(by_row, [1, 0, 2]), tf.transpose(tf.reshape(tap_of, [size, 4])))
    wx = tf.transpose(col_weights)[:, :, None, None]  # [4, size, 1, 1]
    out = taps[0] * wx[0] + taps[1] * wx[1] + taps[2] * wx[2] + taps[3] * wx[3]
    return tf.transpose(out, [1, 0, 2])


def _crop_corners(resized, size, ten_crop):
    """Top-left corners of the centre crop (offsets rounded up, as Torch's CenterCrop), or of
    the four corner crops and the centre crop."""
    height, width = resized
    centre = ((height - size + 1) // 2, (width - size + 1) // 2)
    if not ten_crop:
        return [centre]
    bottom, right = height - size, width - size
    zero = tf.zeros_like(bottom)
    return [(zero, zero), (zero, right), (bottom, zero), (bottom, right), centre]


def resized_crops(data, shorter, size, antialias, ten_crop=False, whole_ratio=WHOLE_RESIZE_RATIO):
    """Crops of an encoded image resized (bicubic) to shorter side `shorter`: the centre
    size x size crop, or with ten_crop the four corner crops and the centre crop.

    When the resized image has at most whole_ratio * shorter**2 pixels (aspect ratios up to
    whole_ratio), the whole image is decoded and resized in one op, then cropped. Above, only
    the source pixels that a crop depends on are decoded (a JPEG) and resized, from the same
    sampling positions and weights (`_resample`), so memory and work follow the crop, not the
    image's aspect ratio; the values are the same (with antialias, to float32 rounding). The
    size is read from the header.

    Returns:
        float32 [crops, size, size, 3] on the 0-255 scale.
    """
    height, width = tf.unstack(tf.cast(image_shape(data), tf.int64))
    resized = shorter_side_size(height, width, shorter)
    corners = _crop_corners(resized, size, ten_crop)

    def whole():
        image = decode(data)
        image_height, image_width = tf.unstack(tf.shape(image)[:2])
        new_h, new_w = shorter_side_size(image_height, image_width, shorter)
        image = resize(image, new_h, new_w, antialias)
        crops = [
            image[y : y + size, x : x + size]
            for y, x in _crop_corners((new_h, new_w), size, ten_crop)
        ]
        return tf.stack(crops)

    def windows():
        if ten_crop:
            image, origin = decode(data), (0, 0)
            return tf.stack(
                [
                    _resample(image, origin, (height, width), resized, corner, size, antialias)
                    for corner in corners
                ]
            )
        return _centre_window(data, (height, width), resized, corners[0], size, antialias)[None]

    small = resized[0] * resized[1] <= int(whole_ratio * shorter**2)
    return tf.ensure_shape(tf.cond(small, whole, windows), [len(corners), size, size, 3])


def _centre_window(data, source, resized, corner, size, antialias):
    """The crop at `corner` from the window of `data` that it depends on (`resized_crops`)."""
    height, width = source
    taps = None
    if antialias:
        (first_y, last_y), (first_x, last_x) = (
            _antialias_span(n, m, start, size)
            for n, m, start in zip(source, resized, corner, strict=True)
        )
    else:
        taps = _taps(source, resized, corner, size)
        (first_y, last_y), (first_x, last_x) = ((t[0][0, 0], t[0][-1, -1]) for t in taps)

    def jpeg():
        # The header gives the size the decoder reads; the window is one MCU wider.
        y = tf.maximum(first_y - JPEG_WINDOW_MARGIN, 0)
        x = tf.maximum(first_x - JPEG_WINDOW_MARGIN, 0)
        bottom = tf.minimum(last_y + 1 + JPEG_WINDOW_MARGIN, height)
        right = tf.minimum(last_x + 1 + JPEG_WINDOW_MARGIN, width)
        crop = tf.cast(tf.stack([y, x, bottom - y, right - x]), tf.int32)
        window = tf.image.decode_and_crop_jpeg(data, crop, channels=3, dct_method=JPEG_DCT)
        return window, y, x

    def other():
        # Decoded in full; for these formats the decoder's size is the header's (tested).
        window = decode(data)[first_y : last_y + 1, first_x : last_x + 1]
        return window, first_y, first_x

    window, y, x = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    return _resample(window, (y, x), source, resized, corner, size, antialias, taps)


def imagenet_train(data, seed, cfg, limits=DEFAULT_LIMITS):
    """The per-image part of the ImageNet training transform of an encoded image.

    Crops a RandomSizedCrop window, resizes it and flips it, and draws the image's color
    jitter and lighting; `apply_color` on a batch of these completes the transform (jitter,
    lighting, normalize).

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
    # A found window is resized to size x size; the fallback resizes the shorter side to
    # size and takes the centre crop (a no-op crop for a found window).
    out_h, out_w = shorter_side_size(h, w, size)
    image = resize(image, tf.where(found, size, out_h), tf.where(found, size, out_w), cfg.antialias)
    image = tf.ensure_shape(center_crop(image, size), [size, size, 3])
    coefficients = tf.constant(NO_JITTER)
    if cfg.color_jitter > 0:
        coefficients = jitter_coefficients(*sample_color_jitter(jitter_seed, cfg.color_jitter))
    shift = lighting_shift(light_seed, cfg.lighting) if cfg.lighting > 0 else tf.zeros([3])
    color = color_map(tf.reduce_mean(image, axis=[0, 1]), coefficients, shift)
    return (random_flip(image, flip_seed) if cfg.flip else image), color


def imagenet_eval(data, cfg, limits=DEFAULT_LIMITS):
    """ImageNet evaluation transform: shorter side to eval_resize, centre (or ten) crop, normalize.

    The one evaluation transform of training, `resnext_tf.export` and prediction; see
    `resized_crops` for how it bounds its memory.

    Args:
        data: Encoded image bytes (scalar string tensor).
        cfg: DataConfig.
        limits: ImageLimits; an image over them raises InvalidArgumentError undecoded.

    Returns:
        float32 [size, size, 3], or [10, size, size, 3] with cfg.ten_crop.
    """
    size = cfg.crop_size
    crops = resized_crops(checked(data, limits), cfg.eval_resize, size, cfg.antialias, cfg.ten_crop)
    if cfg.ten_crop:
        image = tf.ensure_shape(
            tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0), [10, size, size, 3]
        )
    else:
        image = crops[0]
    return normalize(image / 255.0, IMAGENET_MEAN, IMAGENET_STD)


def cifar_train(image, seed, cfg):
    """CIFAR training transform of a uint8 [32, 32, 3] image: normalize, flip, pad, crop."""
    flip_seed, crop_seed = split_seed(seed, 2)
    image = cifar_eval(image, cfg)
    if cfg.flip:
        image = random_flip(image, flip_seed)
    if cfg.pad_crop == 0:
        return image
    pad = cfg.pad_crop
    # Zero padding after normalizing pads with the dataset mean, as in the original.
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    offset = tf.random.stateless_uniform([2], crop_seed, 0, 2 * pad + 1, dtype=tf.int32)
    return tf.slice(image, tf.concat([offset, [0]], 0), [32, 32, 3])


def cifar_eval(image, cfg):
    """CIFAR evaluation transform: normalize the 0-255 image with the dataset mean/std."""
    return normalize(tf.cast(image, tf.float32), *CIFAR_MEAN_STD[cfg.dataset])
