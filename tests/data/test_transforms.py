"""Transforms against the stated distributions and against independent computations."""

import dataclasses
import io
import itertools

import numpy as np
import pytest
import tensorflow as tf
from image_samples import (
    animated_gif,
    encode,
    gif_frames,
    natural_image,
    numpy_color,
    train_image,
    with_jpeg_size,
    with_scan_repeated,
)
from PIL import Image

from resnext_tf.data import DataConfig, decode, evaluation, transforms
from resnext_tf.data.config import ImageLimits
from resnext_tf.recipes import recipe

SAMPLES = 4000


def _seeds(n, salt=0):
    return tf.stack([tf.fill([n], salt), tf.range(n)], axis=1)


def _sample(fn, n=SAMPLES, salt=0):
    """Calls fn(seed) for n seeds, vectorized, and returns numpy results."""
    out = tf.vectorized_map(fn, _seeds(n, salt))
    return tf.nest.map_structure(lambda t: t.numpy(), out)


def _ks_uniform(values, low, high):
    """Kolmogorov-Smirnov distance between the samples and U(low, high)."""
    values = np.sort(values)
    cdf = np.clip((values - low) / (high - low), 0, 1)
    ranks = np.arange(1, len(values) + 1) / len(values)
    return max(np.abs(ranks - cdf).max(), np.abs(ranks - 1 / len(values) - cdf).max())


# 1.63 / sqrt(n) is the 1% critical value of the KS statistic.
KS_LIMIT = 1.63 / np.sqrt(SAMPLES)


def test_crop_window_area_and_aspect_are_uniform_when_every_draw_fits():
    # Area <= 0.5 with aspect in [3/4, 4/3] always fits a square image, so the first try is
    # taken and the drawn area and aspect must follow the stated uniform laws.
    size = 2000
    y, x, h, w, found = _sample(
        lambda s: transforms.sample_crop_window(size, size, s, (0.08, 0.5), (3 / 4, 4 / 3))
    )
    assert found.all()
    area = h * w / size**2
    assert area.min() >= 0.08 - 2e-3 and area.max() <= 0.5 + 2e-3
    assert _ks_uniform(area, 0.08, 0.5) < KS_LIMIT
    aspect = w / h
    assert aspect.min() >= 3 / 4 - 2e-3 and aspect.max() <= 4 / 3 + 2e-3
    swapped = aspect < 1
    assert abs(swapped.mean() - 0.5) < 0.03
    # Before the swap the aspect is U(3/4, 4/3); after it, the swapped ones are 1 / aspect.
    unswapped = np.where(swapped, 1 / aspect, aspect)
    unswapped = unswapped[(unswapped > 0.7501) & (unswapped < 1.3332)]
    assert np.mean(np.abs(unswapped - 1) < 1e-3) < 0.01
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= size).all() and (x + w <= size).all()


def _torch_crop_sizes(rng, height, width, n):
    """Independent numpy simulation of fb.resnet.torch RandomSizedCrop's size draws."""
    areas, aspects = [], []
    for _ in range(n):
        for _ in range(transforms.CROP_TRIES):
            target = rng.uniform(0.08, 1.0) * height * width
            ratio = rng.uniform(3 / 4, 4 / 3)
            w = int(np.floor(np.sqrt(target * ratio) + 0.5))
            h = int(np.floor(np.sqrt(target / ratio) + 0.5))
            if rng.uniform() < 0.5:
                w, h = h, w
            if h <= height and w <= width:
                areas.append(h * w / (height * width))
                aspects.append(w / h)
                break
    return np.asarray(areas), np.asarray(aspects)


def test_crop_window_matches_torch_rejection_sampling():
    height, width = 375, 500
    _, _, h, w, found = _sample(
        lambda s: transforms.sample_crop_window(height, width, s, (0.08, 1.0), (3 / 4, 4 / 3))
    )
    ref_area, ref_aspect = _torch_crop_sizes(np.random.default_rng(0), height, width, SAMPLES)
    area = h * w / (height * width)
    for ours, ref in ((area, ref_area), (w / h, ref_aspect)):
        grid = np.linspace(min(ours.min(), ref.min()), max(ours.max(), ref.max()), 200)
        gap = np.abs(
            np.searchsorted(np.sort(ours), grid) / len(ours)
            - np.searchsorted(np.sort(ref), grid) / len(ref)
        )
        assert gap.max() < 2 * KS_LIMIT
    assert found.all()


def test_crop_offsets_are_uniform_over_all_positions():
    # 8x8 crops (area 0.64, aspect 1) of a 10x10 image start at 0, 1 or 2 in each axis.
    y, x, h, w, _ = _sample(
        lambda s: transforms.sample_crop_window(10, 10, s, (0.64, 0.64), (1.0, 1.0))
    )
    assert (h == 8).all() and (w == 8).all()
    for offsets in (y, x):
        counts = np.bincount(offsets, minlength=3)
        assert len(counts) == 3 and np.all(np.abs(counts / SAMPLES - 1 / 3) < 0.03)


def test_crop_window_falls_back_to_whole_image():
    # Aspect 4 cannot fit a square image at full area: every try misses.
    _, _, h, w, found = _sample(
        lambda s: transforms.sample_crop_window(50, 50, s, (1.0, 1.0), (4.0, 4.0)), n=10
    )
    assert not found.any() and (h == 50).all() and (w == 50).all()


def test_fallback_resizes_shorter_side_and_centre_crops():
    data = encode(natural_image(np.random.default_rng(0), 60, 90), quality=95)
    cfg = DataConfig(
        "imagenet",
        image_size=32,
        crop_area_range=(1.0, 1.0),
        aspect_range=(4.0, 4.0),
        color_jitter=0,
        lighting=0,
        flip=False,
    )
    out = train_image(data, tf.constant([1, 2]), cfg)
    # Shorter side 60 -> 32, longer 90 -> 48 (truncated); the crop starts at ceil(16 / 2) = 8.
    expected = _numpy_resized(data, 32)[:, 8:40]
    expected = (expected - transforms.IMAGENET_MEAN) / transforms.IMAGENET_STD
    np.testing.assert_allclose(out, expected, atol=1e-3)


def test_color_jitter_draws():
    factors, order = _sample(lambda s: transforms.sample_color_jitter(s, 0.4))
    assert factors.min() >= 0.6 and factors.max() <= 1.4
    for column in factors.T:
        assert _ks_uniform(column, 0.6, 1.4) < KS_LIMIT
    orders, counts = np.unique(order, axis=0, return_counts=True)
    assert len(orders) == 6 and np.all(np.abs(counts / SAMPLES - 1 / 6) < 0.025)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_batched_color_maps_equal_the_steps_one_after_the_other(order):
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (2, 6, 5, 3)).astype(np.float32)
    factors = np.array([[1.3, 0.7, 1.35], [0.65, 1.2, 0.8]], np.float32)
    shifts = np.array([[0.02, -0.01, 0.005], [-0.03, 0.0, 0.01]], np.float32)
    color = [
        transforms.color_map(
            tf.reduce_mean(images[i], axis=[0, 1]),
            transforms.jitter_coefficients(tf.constant(factors[i]), tf.constant(order)),
            tf.constant(shifts[i]),
        )
        for i in range(2)
    ]
    out = transforms.apply_color(tf.constant(images), tf.stack(color)).numpy()
    for i in range(2):
        expected, unclamped_max = numpy_color(
            images[i].astype(np.float64), factors[i], order, shifts[i]
        )
        np.testing.assert_allclose(out[i], expected, atol=2e-5)
        # No clamping: the brightness factor 1.3 pushes values beyond 1 before normalizing.
        if i == 0 and order == (0, 1, 2):
            assert unclamped_max > 1


def test_lighting_noise_scale():
    rgb = _sample(lambda s: transforms.lighting_shift(s, 0.1))
    # rgb = eigvec @ (alpha * eigval): solve for alpha and check it is N(0, 0.1).
    alpha = np.linalg.solve(np.array(transforms.PCA_EIGVEC), rgb.T).T / np.array(
        transforms.PCA_EIGVAL
    )
    assert np.all(np.abs(alpha.mean(0)) < 0.01)
    np.testing.assert_allclose(alpha.std(0), 0.1, rtol=0.06)


def test_flip_rate_and_exact_mirror():
    image = tf.reshape(tf.range(12, dtype=tf.float32), [2, 2, 3])
    out = _sample(lambda s: transforms.random_flip(image, s))
    flipped = np.all(out == image.numpy()[:, ::-1], axis=(1, 2, 3))
    kept = np.all(out == image.numpy(), axis=(1, 2, 3))
    assert np.all(flipped ^ kept)
    assert abs(flipped.mean() - 0.5) < 0.03


def test_cifar_train_is_a_flip_and_a_shifted_crop_of_the_padded_image():
    cfg = DataConfig("cifar10")
    image = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mean, std = transforms.CIFAR_MEAN_STD["cifar10"]
    normalized = (image - np.array(mean)) / np.array(std)
    outs = _sample(lambda s: transforms.cifar_train(tf.constant(image), s, cfg), n=600)
    padded = [np.pad(im, [(4, 4), (4, 4), (0, 0)]) for im in (normalized, normalized[:, ::-1])]
    shifts = [(flip, dy, dx) for flip in (0, 1) for dy in range(9) for dx in range(9)]
    candidates = np.stack([padded[f][dy : dy + 32, dx : dx + 32] for f, dy, dx in shifts])
    seen = []
    for out in outs:
        (match,) = np.flatnonzero(np.abs(candidates - out).max(axis=(1, 2, 3)) < 1e-5)
        seen.append(shifts[match])
    seen = np.asarray(seen)
    assert abs(seen[:, 0].mean() - 0.5) < 0.07
    assert set(seen[:, 1]) == set(range(9)) and set(seen[:, 2]) == set(range(9))
    np.testing.assert_allclose(seen[:, 1:].mean(0), 4, atol=0.4)


def _pil_eval(data, resize, size):
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    scaled = (resize, h * resize // w) if w <= h else (w * resize // h, resize)
    image = np.asarray(image.resize(scaled, Image.BICUBIC), np.float64) / 255
    top, left = (image.shape[0] - size + 1) // 2, (image.shape[1] - size + 1) // 2
    return image[top : top + size, left : left + size]


def _keys_resize_axis(image, out_size, axis):
    """Keys cubic (a=-0.5) with half-pixel centres; taps outside the image get weight 0."""
    n = image.shape[axis]
    centre = (np.arange(out_size) + 0.5) * n / out_size - 0.5
    taps = np.floor(centre)[:, None] + np.arange(-1, 3)
    d = np.abs(centre[:, None] - taps)
    weights = np.where(d <= 1, 1.5 * d**3 - 2.5 * d**2 + 1, -0.5 * d**3 + 2.5 * d**2 - 4 * d + 2)
    weights = np.where((taps >= 0) & (taps < n), weights, 0)
    weights /= weights.sum(1, keepdims=True)
    matrix = np.zeros((out_size, n))
    np.add.at(matrix, (np.arange(out_size)[:, None], np.clip(taps, 0, n - 1).astype(int)), weights)
    return np.moveaxis(np.tensordot(matrix, np.moveaxis(image, axis, 0), axes=1), 0, axis)


def _numpy_resized(data, resize):
    """Decodes with PIL and resizes the shorter side to `resize`, in [0, 1]."""
    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float64)
    h, w = image.shape[:2]
    new_h, new_w = (resize, w * resize // h) if h <= w else (h * resize // w, resize)
    return _keys_resize_axis(_keys_resize_axis(image, new_h, 0), new_w, 1) / 255


def _numpy_eval(data, resize, size):
    image = _numpy_resized(data, resize)
    top, left = (image.shape[0] - size + 1) // 2, (image.shape[1] - size + 1) // 2
    return image[top : top + size, left : left + size]


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("shape", [(375, 500), (500, 333)])
def test_imagenet_eval_matches_independent_resize_crop_normalize(antialias, shape):
    data = encode(natural_image(np.random.default_rng(3), *shape), quality=95)
    out = evaluation.imagenet_eval(
        tf.constant(data), DataConfig("imagenet", antialias=antialias)
    ).numpy()
    reference = _pil_eval if antialias else _numpy_eval
    expected = (reference(data, 256, 224) - transforms.IMAGENET_MEAN) / transforms.IMAGENET_STD
    assert out.shape == (224, 224, 3)
    # PIL rounds both resize passes to uint8: up to ~1 / 255 (0.02 after normalizing).
    # TF's non-antialiased bicubic reads its weights from a table (1e-3 after normalizing).
    tolerance = 0.02 if antialias else 1e-3
    np.testing.assert_allclose(out, expected, atol=tolerance)
    assert np.abs(out - expected).mean() < tolerance / 3


def test_ten_crop_corners_centre_and_mirrors():
    data = encode(natural_image(np.random.default_rng(4), 40, 55), quality=95)
    cfg = DataConfig("imagenet", image_size=20, eval_resize=32, ten_crop=True)
    crops = evaluation.imagenet_eval(tf.constant(data), cfg).numpy()
    # Shorter side 40 -> 32, longer 55 -> 44; the centre crop starts at ceil(12/2), ceil(24/2).
    wide = (_numpy_resized(data, 32) - transforms.IMAGENET_MEAN) / transforms.IMAGENET_STD
    assert wide.shape == (32, 44, 3)
    expected = [wide[:20, :20], wide[:20, 24:], wide[12:, :20], wide[12:, 24:], wide[6:26, 12:32]]
    expected += [crop[:, ::-1] for crop in expected]
    np.testing.assert_allclose(crops, np.stack(expected), atol=1e-4)


def test_decode_handles_cmyk_png_and_grey():
    rgb = natural_image(np.random.default_rng(6), 40, 50)
    cmyk = encode(rgb, mode="CMYK", quality=95)
    pil = np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB"), np.int32)
    decoded = decode.decode(cmyk).numpy().astype(np.int32)
    assert decoded.shape == (40, 50, 3) and np.abs(decoded - pil).max() <= 1
    png = decode.decode(encode(rgb, fmt="PNG")).numpy()
    np.testing.assert_array_equal(png, rgb)
    grey = decode.decode(encode(rgb[..., 0], quality=95)).numpy()
    assert grey.shape == (40, 50, 3) and (grey[..., 0] == grey[..., 2]).all()
    assert decode.image_shape(encode(rgb, fmt="PNG")).numpy().tolist() == [40, 50]


@pytest.mark.parametrize("subsampling, tolerance", [(0, 1e-5), (2, 0.6)])
def test_fused_crop_decode_matches_full_decode(subsampling, tolerance):
    # 4:4:4 JPEGs decode a window exactly; with 4:2:0 chroma, the window's edge pixels are
    # upsampled from fewer neighbours, so they may differ slightly.
    data = encode(
        natural_image(np.random.default_rng(7), 150, 200), quality=90, subsampling=subsampling
    )
    cfg = DataConfig("imagenet", image_size=64)
    seed = tf.constant([3, 4])
    fused = train_image(data, seed, cfg)
    full = train_image(data, seed, DataConfig("imagenet", image_size=64, fused_crop=False))
    assert np.abs(fused - full).max() < tolerance
    assert np.abs(fused - full).mean() < tolerance / 10


def _full_resize_crops(data, resize, size, antialias, ten_crop=False):
    """The evaluation crops as computed before crop windows: decode, resize the whole image
    with tf.image.resize, crop (0-255 scale)."""
    image = decode.decode(tf.constant(data))
    height, width = tf.unstack(tf.shape(image)[:2])
    new_size = transforms.shorter_side_size(height, width, resize)
    image = tf.image.resize(image, new_size, method="bicubic", antialias=antialias).numpy()
    top, left = (image.shape[0] - size + 1) // 2, (image.shape[1] - size + 1) // 2
    corners = [(top, left)]
    if ten_crop:
        bottom, right = image.shape[0] - size, image.shape[1] - size
        corners = [(0, 0), (0, right), (bottom, 0), (bottom, right), (top, left)]
    return np.stack([image[y : y + size, x : x + size] for y, x in corners])


def _normalized(crops):
    return (crops / 255.0 - transforms.IMAGENET_MEAN) / transforms.IMAGENET_STD


# Ordinary photo sizes (height, width), a square one as large as the resize, small ones.
ORDINARY_SHAPES = [(375, 500), (500, 375), (256, 256), (480, 640), (80, 100), (333, 500), (7, 5)]


@pytest.mark.parametrize("fmt, options", [("JPEG", {"quality": 90}), ("PNG", {})])
def test_eval_transform_is_the_whole_resize_and_the_centre_crop(fmt, options):
    rng = np.random.default_rng(11)
    for shape in ORDINARY_SHAPES:
        data = encode(natural_image(rng, *shape), fmt, **options)
        for antialias in (False, True):
            cfg = DataConfig("imagenet", antialias=antialias)
            full = _full_resize_crops(data, 256, 224, antialias)[0]
            out = evaluation.imagenet_eval(tf.constant(data), cfg).numpy()
            np.testing.assert_allclose(out, _normalized(full), atol=1e-5)


def test_ten_crops_are_the_corners_the_centre_and_their_mirrors():
    data = encode(natural_image(np.random.default_rng(12), 300, 410), quality=90)
    for antialias in (False, True):
        cfg = DataConfig("imagenet", image_size=64, eval_resize=73, ten_crop=True)
        cfg = dataclasses.replace(cfg, antialias=antialias)
        crops = _full_resize_crops(data, 73, 64, antialias, ten_crop=True)
        expected = np.concatenate([crops, crops[:, :, ::-1]])
        out = evaluation.imagenet_eval(tf.constant(data), cfg).numpy()
        np.testing.assert_allclose(out, _normalized(expected), atol=1e-5)


def test_eval_of_strips_is_refused_beyond_the_aspect_limit():
    # The evaluation resizes the whole image: the aspect-ratio limit bounds that resize to
    # max_aspect * shorter**2 pixels (docs/safety.md).
    for height, width in ((1, 65000), (6000, 1)):
        data = encode(natural_image(np.random.default_rng(13), height, width))
        with pytest.raises(tf.errors.InvalidArgumentError, match="aspect-ratio limit 50"):
            evaluation.imagenet_eval(tf.constant(data), DataConfig("imagenet"))
    # A strip within the limit gives the values of the whole resize.
    data = encode(natural_image(np.random.default_rng(14), 6, 290), "PNG")
    out = evaluation.imagenet_eval(tf.constant(data), DataConfig("imagenet")).numpy()
    np.testing.assert_allclose(
        out, _normalized(_full_resize_crops(data, 256, 224, False)[0]), atol=1e-5
    )


def test_eval_resize_is_the_nearest_integer_of_size_256_224_by_default():
    sizes = {224: 256, 32: 37, 64: 73, 299: 342, 320: 366, 448: 512}
    assert {s: recipe("imagenet").eval_resize_for(s) for s in sizes} == sizes
    assert {s: DataConfig("imagenet", image_size=s).eval_resize for s in sizes} == sizes
    assert DataConfig("imagenet").eval_resize == 256
    assert DataConfig("imagenet", image_size=64, eval_resize=80).eval_resize == 80


def _webp(array, **options):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "WEBP", **options)
    return buffer.getvalue()


def test_header_sizes_of_every_format_match_the_decoder():
    rng = np.random.default_rng(15)
    rgb = natural_image(rng, 37, 61)
    rgba = np.concatenate([rgb, np.full((37, 61, 1), 128, np.uint8)], axis=-1)
    samples = {
        "jpeg": ("JPEG", encode(rgb, quality=90)),
        "png": ("PNG", encode(rgb, "PNG")),
        "grey png": ("PNG", encode(rgb[..., 0], "PNG")),
        "gif": ("GIF", encode(rgb, "GIF")),
        "bmp": ("BMP", encode(rgb, "BMP")),
        "webp lossy": ("WebP", _webp(rgb, quality=80)),
        "webp lossless": ("WebP", _webp(rgb, lossless=True)),
        "webp extended": ("WebP", _webp(rgba, quality=80)),
    }
    for name, (fmt, data) in samples.items():
        header = [t.numpy() for t in decode.image_header(tf.constant(data))]
        assert decode.IMAGE_FORMATS[header[0] - 1] == fmt, name
        assert header[1:5] == [37, 61, 37 * 61, True], name
        assert header[5].tolist() == [37, 61], name
        assert decode.check_image(tf.constant(data)).numpy() == b"", name
        if name != "webp extended":  # RGBA WebP: TensorFlow decodes it to 4 channels only
            assert decode.decode(data).shape == (37, 61, 3), name
    # A top-down BMP stores a negative height.
    bmp = bytearray(samples["bmp"][1])
    bmp[22:26] = (-37).to_bytes(4, "little", signed=True)
    assert decode.image_shape(bytes(bmp)).numpy().tolist() == [37, 61]


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "is empty (0 bytes)"),
        (b"not an image", "is not a JPEG, PNG, GIF, BMP or WebP image"),
        (b"\xff\x0a\xff\x07", "is not a JPEG, PNG, GIF, BMP or WebP image"),  # JPEG XL
        (b"\x89PNG\r\n\x1a\n", "has no pixels (0x0 in its header)"),
        (b"GIF89a\x05\x00", "has no pixels (0x0 in its header)"),  # no frame
        (b"BM", "has no pixels (0x0 in its header)"),
    ],
)
def test_check_image_names_the_reason(data, reason):
    assert decode.check_image(tf.constant(data)).numpy().decode() == reason


def test_limits_are_read_from_the_header_before_decoding():
    rng = np.random.default_rng(16)
    jpeg = encode(natural_image(rng, 16, 16))
    cases = {
        # A 20000 x 20000 promise in a 1 KB file: refused before any decoding.
        with_jpeg_size(jpeg, 20000, 20000): "20000x20000 pixels exceed the pixel limit 89478485",
        encode(natural_image(rng, 1, 65000)): "65000x1 pixels exceed the aspect-ratio limit 50",
        encode(natural_image(rng, 6000, 1)): "1x6000 pixels exceed the aspect-ratio limit 50",
    }
    for data, reason in cases.items():
        assert decode.check_image(tf.constant(data)).numpy().decode() == reason
        with pytest.raises(tf.errors.InvalidArgumentError, match=reason):
            evaluation.imagenet_eval(tf.constant(data), DataConfig("imagenet"))
    tight = ImageLimits(max_pixels=255, max_aspect=1.5, max_bytes=len(jpeg) - 1)
    for limits, reason in [
        (tight, f"{len(jpeg)} bytes exceed the size limit {len(jpeg) - 1}"),
        (dataclasses.replace(tight, max_bytes=10**6), "16x16 pixels exceed the pixel limit 255"),
    ]:
        assert decode.check_image(tf.constant(jpeg), limits).numpy().decode() == reason
    wide = encode(natural_image(rng, 10, 16))
    limits = ImageLimits(max_aspect=1.5)
    assert (
        decode.check_image(tf.constant(wide), limits).numpy()
        == b"16x10 pixels exceed the aspect-ratio limit 1.5"
    )
    assert decode.check_image(tf.constant(wide), ImageLimits(max_aspect=1.7)).numpy() == b""


@pytest.mark.parametrize(
    "kwargs", [{"max_pixels": 0}, {"max_bytes": 1.5}, {"max_aspect": 0.5}, {"max_pixels": True}]
)
def test_image_limits_reject_bad_values(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ImageLimits(**kwargs)


def _gif(screen, frames, extra=b""):
    """A GIF with the given screen and frame descriptors (left, top, width, height), each
    frame with one data sub-block, then `extra` before the trailer."""
    out = b"GIF89a" + b"".join(v.to_bytes(2, "little") for v in screen) + b"\x00\x00\x00"
    for frame in frames:
        out += b"\x2c" + b"".join(v.to_bytes(2, "little") for v in frame) + b"\x00"
        out += b"\x08\x02\x4c\x01\x00"  # LZW code size, a 2-byte sub-block, the terminator
    return out + extra + b"\x3b"


def test_gif_frames_count_towards_the_pixel_limit():
    rng = np.random.default_rng(17)
    animated = animated_gif(rng, 30, 40, 7)
    _, height, width, pixels, walked, _ = (t.numpy() for t in decode.image_header(animated))
    assert (height, width, pixels, walked) == (30, 40, 7 * 30 * 40, True)
    assert decode.decode(animated).shape == (30, 40, 3)  # the first frame
    # A 10 x 10 screen whose 5 frames claim 5000 x 5000 each: giflib would allocate them all.
    bomb = _gif((10, 10), [(0, 0, 5000, 5000)] * 5)
    assert decode.check_image(tf.constant(bomb)).numpy().decode() == (
        "GIF frames hold 125000000 pixels in all, over the pixel limit 89478485"
    )
    # Comment blocks of 1-byte sub-blocks: one step each, refused past GIF_MAX_STEPS.
    comments = b"\x21\xfe" + b"\x01a" * decode.GIF_MAX_STEPS + b"\x00"
    many = _gif((10, 10), [(0, 0, 10, 10)], extra=comments)
    assert decode.check_image(tf.constant(many)).numpy().decode() == (
        f"GIF has more than {decode.GIF_MAX_STEPS} blocks"
    )
    # Long frame data is skipped GIF_RUN sub-blocks at a time.
    big = encode(natural_image(rng, 1500, 1200), "GIF")
    _, _, _, pixels, walked, _ = (t.numpy() for t in decode.image_header(big))
    assert pixels == 1500 * 1200 and walked


def test_gif_size_is_its_largest_frame_not_its_screen():
    # TensorFlow decodes a GIF to its widest frame's width by its tallest frame's height,
    # whatever the logical screen and the offsets say.
    samples = {
        "smaller": ((100, 100), [(50, 40, 0, 0)], (40, 50)),
        "larger": ((20, 20), [(60, 30, 0, 0)], (30, 60)),
        "crossed": ((100, 100), [(30, 20, 0, 0), (20, 30, 5, 5)], (30, 30)),
        "offset": ((100, 100), [(10, 10, 90, 90), (10, 10, 0, 0)], (10, 10)),
    }
    for name, (screen, frames, size) in samples.items():
        data = gif_frames(screen, frames)
        assert decode.decode(data).shape == (*size, 3), name
        assert decode.image_shape(data).numpy().tolist() == list(size), name
        assert decode.check_image(tf.constant(data)).numpy() == b"", name
    # 394 bytes whose screen says 100 x 100: a 20000 x 1 and a 1 x 20000 frame decode to
    # 20000 x 20000 x 3 bytes (1.1 GiB).
    crossed = gif_frames((100, 100), [(20000, 1, 0, 0), (1, 20000, 0, 0)])
    assert decode.check_image(tf.constant(crossed)).numpy().decode() == (
        "20000x20000 pixels exceed the pixel limit 89478485"
    )
    # Damage that stops giflib leaves TensorFlow the first frames: this cut 2000 x 2000 GIF
    # decodes to 2000 x 1 (its evaluation resize then took +1.6 GiB).
    cut = gif_frames((10, 10), [(2000, 1, 0, 0), (1, 2000, 0, 0)])[:114]
    assert decode.decode(cut).shape == (1, 2000, 3)
    assert decode.check_image(tf.constant(cut)).numpy().decode() == (
        "the first frames of the GIF are 2000x1 pixels, over the aspect-ratio limit 50 (what a "
        "damaged GIF decodes to)"
    )
    # A strip of a frame makes the decoded image a strip too.
    strip = gif_frames((100, 100), [(100, 100, 0, 0), (6000, 1, 0, 0)])
    assert decode.check_image(tf.constant(strip)).numpy().decode() == (
        "6000x100 pixels exceed the aspect-ratio limit 50"
    )


def test_jpeg_scans_are_limited():
    progressive = encode(np.full((64, 48, 3), 128, np.uint8), progressive=True)
    assert decode.jpeg_scans(progressive)[0].numpy() == 10  # libjpeg's standard script
    at_limit = with_scan_repeated(progressive, decode.JPEG_MAX_SCANS - 10)
    assert decode.check_image(tf.constant(at_limit)).numpy() == b""
    assert decode.decode(at_limit).shape == (64, 48, 3)
    # Each scan costs a pass over the image: 2010 of them took 11.5 s for 3000 x 3000 pixels.
    over = with_scan_repeated(progressive, decode.JPEG_MAX_SCANS - 9)
    assert decode.check_image(tf.constant(over)).numpy().decode() == (
        f"JPEG has more than {decode.JPEG_MAX_SCANS} scans"
    )


def test_multi_scan_jpeg_coefficients_count_each_component():
    rng = np.random.default_rng(18)
    image = natural_image(rng, 16, 16)
    # libjpeg holds 2 bytes a coefficient of every component of a progressive JPEG at once:
    # 8 bytes a pixel for CMYK (+858 MiB for 9000 x 9000 in 1.2 KB), 6 at most for RGB.
    samples = {
        ("CMYK", True): "9000x9000 pixels x 4 components exceed 3 x the pixel limit 89478485 in "
        "a multi-scan JPEG (libjpeg holds them all)",
        ("CMYK", False): "",
        ("RGB", True): "",
        ("L", True): "",
    }
    for (mode, progressive), reason in samples.items():
        data = with_jpeg_size(encode(image, mode=mode, progressive=progressive), 9000, 9000)
        assert decode.check_image(tf.constant(data)).numpy().decode() == reason, mode
    cmyk = encode(natural_image(rng, 30, 40), mode="CMYK", progressive=True)
    assert decode.decode(cmyk).shape == (30, 40, 3)
    for max_pixels, reason in [
        (1600, ""),
        (1599, "40x30 pixels x 4 components exceed 3 x the pixel limit 1599 in a multi-scan"),
    ]:
        limits = ImageLimits(max_pixels=max_pixels)
        assert decode.check_image(tf.constant(cmyk), limits).numpy().decode().startswith(reason)
