"""Writers of images and CIFAR pickles in the official formats, and a one-image ImageNet
training transform, shared by the data tests."""

import io
import os
import pickle

import numpy as np
from PIL import Image

from resnext_tf.data import transforms

# One colour per class of the generated CIFAR-10 sets, far apart in RGB so that a few SGD steps
# separate the classes (the training tests; the INT8 test shifts them to make classes overlap).
COLOURS = np.array(
    [
        [230, 25, 25],
        [25, 230, 25],
        [25, 25, 230],
        [230, 230, 25],
        [230, 25, 230],
        [25, 230, 230],
        [240, 240, 240],
        [15, 15, 15],
        [128, 64, 0],
        [0, 128, 128],
    ],
    np.float32,
)

# Class folders of the tiny ImageNet; sorted order gives the labels.
WNIDS = ("n01440764", "n01443537", "n01484850")


def natural_image(rng, height, width):
    """A smooth color gradient with texture and mild noise, as uint8 [height, width, 3]."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    phase = rng.uniform(0, 2 * np.pi, 3)
    channels = [
        128 + 80 * np.sin(3 * x + phase[0]) * np.cos(2 * y),
        128 + 80 * np.cos(4 * y + phase[1]),
        128 + 60 * np.sin(2 * (x + y) + phase[2]),
    ]
    image = np.stack(channels, -1) + rng.normal(0, 6, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(array, fmt="JPEG", mode=None, **kwargs):
    """Encodes a uint8 array with PIL (optionally converted to `mode` first)."""
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def write_cifar_batches(folder, names, sizes, label_key, seed):
    """Writes official-format CIFAR pickles; returns (images NHWC uint8, labels) in file order."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    images, labels = [], []
    for name, size in zip(names, sizes, strict=True):
        rows = rng.integers(0, 256, (size, 3072), dtype=np.uint8)
        batch_labels = [int(v) for v in rng.integers(0, 10, size)]
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"data": rows, label_key: batch_labels, b"batch_label": b"x"}, f)
        # Independent of the reader: pixel (r, c) of channel k is row entry k * 1024 + r * 32 + c.
        images.append(np.stack([rows[:, k * 1024 : (k + 1) * 1024] for k in range(3)], -1))
        labels += batch_labels
    return np.concatenate(images).reshape(-1, 32, 32, 3), np.asarray(labels)


def train_image(data, seed, cfg):
    """transforms.imagenet_train of one encoded image, completed by apply_color, as numpy."""
    image, color = transforms.imagenet_train(data, seed, cfg)
    return transforms.apply_color(image[None], color[None])[0].numpy()


def numpy_color(image, factors, order, shift):
    """fb.resnet's color steps one after the other on a 0-255 image: jitter blends in
    `order`, lighting `shift`, normalization (float64, no clamping).

    Returns:
        (normalized image, largest value after the jitter, before normalizing).
    """
    image = image / 255
    for op in order:
        alpha = factors[op]
        grey = image @ np.array([0.299, 0.587, 0.114])
        target = [np.zeros_like(image), np.full_like(image, grey.mean()), grey[..., None]][op]
        image = alpha * image + (1 - alpha) * target
    jittered_max = image.max()
    normalized = (image + shift - np.array(transforms.IMAGENET_MEAN)) / transforms.IMAGENET_STD
    return normalized, jittered_max


def with_jpeg_size(data, width, height):
    """`data`, a JPEG, with the size in its frame header (SOF) replaced: what the header
    promises without the pixels to match, as in a decompression bomb."""
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            # Marker, segment length (2), sample precision (1), then height and width.
            size = height.to_bytes(2, "big") + width.to_bytes(2, "big")
            return data[: at + 5] + size + data[at + 9 :]
    raise ValueError("no baseline or progressive frame header")


def animated_gif(rng, height, width, frames):
    """An animated GIF of random frames."""
    images = [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))]
    images += [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
               for _ in range(frames - 1)]  # fmt: skip
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:])
    return buffer.getvalue()


def _lzw_runs(count, code_size=2):
    """GIF LZW data of `count` pixels of colour 0: codes for runs of 1, 2, 3, ... pixels, the
    way an LZW encoder packs a uniform frame (about sqrt(2 * count) codes)."""
    clear, end = 1 << code_size, (1 << code_size) + 1
    out, bits, nbits, width = bytearray(), 0, 0, code_size + 1

    def emit(code):
        nonlocal bits, nbits
        bits, nbits = bits | code << nbits, nbits + width
        while nbits >= 8:
            out.append(bits & 255)
            bits, nbits = bits >> 8, nbits - 8

    emit(clear)
    next_code, run, left = end + 1, 1, count
    while left > 0:
        take = min(run, left)
        emit(0 if take == 1 else end + take - 1)  # the run of `take` pixels
        left -= take
        if left > 0 and next_code < 4096:
            next_code += 1  # the decoder's new entry: this run and one pixel more
            width += next_code > 1 << width and width < 12
            run = take + 1
        elif left > 0:
            emit(clear)
            next_code, run, width = end + 1, 1, code_size + 1
    emit(end)
    return bytes(out + (bytes([bits]) if nbits else b""))


def gif_frames(screen, frames, extra=b""):
    """A valid GIF of uniform frames: the logical screen (width, height), frames (width,
    height, left, top), then `extra` blocks before the trailer."""

    def little(*values):
        return b"".join(v.to_bytes(2, "little") for v in values)

    out = bytearray(b"GIF89a" + little(*screen) + b"\x80\x00\x00" + b"\x00" * 3 + b"\xff" * 3)
    for width, height, left, top in frames:
        data = _lzw_runs(width * height)
        out += b"\x2c" + little(left, top, width, height) + b"\x00\x02"
        for at in range(0, len(data), 255):
            out += bytes([len(data[at : at + 255])]) + data[at : at + 255]
        out += b"\x00"
    return bytes(out + extra + b"\x3b")


def with_scan_repeated(data, count):
    """`data`, a progressive JPEG, with its last scan repeated `count` more times: libjpeg
    passes over the whole image for each, however few bytes it has."""
    at = data.rfind(b"\xff\xda")
    return data[:-2] + data[at:-2] * count + data[-2:]
