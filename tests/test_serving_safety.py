"""Serving survives hostile images: bounded memory, clear per-image errors, a seeded fuzz run.

The checks run the exported serving_default signature of a tiny ImageNet model in a child
process: its peak memory (ru_maxrss) is its own, and a hang meets the timeout instead of
stopping the test run.
"""

import io
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from data.image_samples import gif_frames, with_jpeg_size, with_scan_repeated
from PIL import Image

import resnext_tf
from resnext_tf import export
from resnext_tf.data.config import ImageLimits

# Peak memory a hostile image may add over a normal one, in bytes. Before the crop windows
# and limits, a 1 x 2000 JPEG took 1.6 GB and a 6000 x 1 one 4.8 GB.
MEMORY_BOUND = 200 * 2**20
# The seeded fuzz run: images per kind of damage, and the child process's time limit.
FUZZ_PER_KIND = 50
FUZZ_TIMEOUT_S = 150

MEMORY_CHILD = """
import json, resource, sys
import tensorflow as tf

export_path, bound, normal, *files = sys.argv[1:]
bound = int(bound)
serve = tf.saved_model.load(export_path).signatures["serving_default"]


def read(name):
    with open(name, "rb") as f:
        return f.read()


def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def attempt(call):
    try:
        call()
        return "served"
    except tf.errors.InvalidArgumentError as e:
        return str(e).split("assertion failed: ")[-1].split("\\n")[0]


# Warm up every path measured below (loading, tracing, the error path) before the baseline.
attempt(lambda: serve(image_bytes=tf.constant([read(normal)])))
attempt(lambda: serve(image_bytes=tf.constant([b"not an image"])))
base = peak()
results = []
for name in files:
    data = read(name)
    outcome = attempt(lambda: serve(image_bytes=tf.constant([data])))
    results.append([name, "serving", outcome, peak() - base])
    if peak() - base > bound:
        break  # stop before anything worse
print(json.dumps({"base": base, "results": results}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """serving_default of a tiny 224 x 224 ImageNet model with the default image limits."""
    keras.utils.set_random_seed(0)
    model = resnext_tf.build_resnext(50, cardinality=2, base_width=4, conv_impl="grouped")
    return export.export_saved_model(
        model, tmp_path_factory.mktemp("serving"), "tiny", 1, warmup=False
    )


def encode(array, fmt="JPEG", mode=None, **options):
    image = Image.fromarray(array)
    buffer = io.BytesIO()
    (image.convert(mode) if mode else image).save(buffer, fmt, **options)
    return buffer.getvalue()


def gradient(rng, height, width):
    """A smooth random color image, uint8 [height, width, 3]."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width, 1)
    phase = rng.uniform(0, 6, 3)
    image = [128 + 100 * np.sin(3 * x + 2 * y + p) for p in phase]
    return np.clip(np.stack(image, -1) + rng.normal(0, 5, (height, width, 3)), 0, 255).astype(
        np.uint8
    )


def run_child(code, *args, timeout=300):
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


def test_extreme_images_keep_memory_bounded(exported, tmp_path):
    rng = np.random.default_rng(0)
    files = {
        "normal": encode(gradient(rng, 480, 640)),
        "1x2000": encode(gradient(rng, 1, 2000)),  # height x width
        "6000x1": encode(gradient(rng, 6000, 1)),
        "1x65000": encode(gradient(rng, 1, 65000)),
        "20000x20000": with_jpeg_size(encode(gradient(rng, 16, 16)), 20000, 20000),
        "256x12800": encode(gradient(rng, 256, 12800)),  # at the aspect-ratio limit
        # 394 bytes, a 100 x 100 screen; its frames decode to 20000 x 20000 (+1.2 GiB before).
        "crossed-gif": gif_frames((100, 100), [(20000, 1, 0, 0), (1, 20000, 0, 0)]),
        # 114 bytes, cut in its second frame: it decodes to its first, 2000 x 1 (+1.6 GiB).
        "cut-gif": gif_frames((10, 10), [(2000, 1, 0, 0), (1, 2000, 0, 0)])[:114],
        # 1.2 KB: libjpeg would hold 9000 x 9000 x 4 coefficients of 2 bytes (+858 MiB before).
        "cmyk-progressive": with_jpeg_size(
            encode(gradient(rng, 16, 16), mode="CMYK", progressive=True), 9000, 9000
        ),
        # 100 KB, 3000 x 3000 in 2010 scans: 11.5 s before.
        "2010-scans": with_scan_repeated(
            encode(np.full((3000, 3000, 3), 128, np.uint8), progressive=True), 2000
        ),
    }
    for name, data in files.items():
        (tmp_path / f"{name}.jpg").write_bytes(data)
    paths = [str(tmp_path / f"{name}.jpg") for name in files]
    report, _ = run_child(MEMORY_CHILD, exported, str(MEMORY_BOUND), *paths)
    outcomes = {
        (os.path.basename(n)[:-4], how): (o, extra) for n, how, o, extra in report["results"]
    }
    for (name, how), (outcome, extra) in outcomes.items():
        assert extra < MEMORY_BOUND, f"{name} ({how}) added {extra / 2**20:.0f} MiB: {outcome}"
    serving = {name: o for (name, how), (o, _) in outcomes.items() if how == "serving"}
    assert serving == {
        "1x2000": "[image 0: 2000x1 pixels exceed the aspect-ratio limit 50]",
        "6000x1": "[image 0: 1x6000 pixels exceed the aspect-ratio limit 50]",
        "1x65000": "[image 0: 65000x1 pixels exceed the aspect-ratio limit 50]",
        "20000x20000": "[image 0: 20000x20000 pixels exceed the pixel limit 89478485]",
        "crossed-gif": "[image 0: 20000x20000 pixels exceed the pixel limit 89478485]",
        "cut-gif": "[image 0: the first frames of the GIF are 2000x1 pixels, over the "
        "aspect-ratio limit 50 (what a damaged GIF decodes to)]",
        "cmyk-progressive": "[image 0: 9000x9000 pixels x 4 components exceed 3 x the pixel "
        "limit 89478485 in a multi-scan JPEG (libjpeg holds them all)]",
        "2010-scans": "[image 0: JPEG has more than 100 scans]",
        # The widest image the limits allow is resized whole, its memory bounded by them.
        "256x12800": "served",
    }


def test_export_applies_its_image_limits(tmp_path):
    keras.utils.set_random_seed(0)
    model = resnext_tf.build_resnext(50, 2, 4, input_shape=(32, 32, 3))
    limits = ImageLimits(max_pixels=10_000, max_aspect=2, max_bytes=50_000)
    path = export.export_saved_model(model, tmp_path, "m", warmup=False, image_limits=limits)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    rng = np.random.default_rng(1)
    ok = encode(gradient(rng, 60, 80))
    assert serve(image_bytes=tf.constant([ok, ok]))["classes"].shape == (2, 5)
    requests = {
        "image 1: 120x100 pixels exceed the pixel limit 10000": [
            ok,
            encode(gradient(rng, 100, 120)),
        ],
        "image 0: 30x10 pixels exceed the aspect-ratio limit 2": [
            encode(gradient(rng, 10, 30)),
            ok,
        ],
        r"image 2: \d+ bytes exceed the size limit 50000": [
            ok,
            ok,
            encode(gradient(rng, 150, 150), "BMP"),
        ],
    }
    for message, images in requests.items():
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            serve(image_bytes=tf.constant(images))
    predict_images = tf.saved_model.load(path).signatures["predict_images"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=export.EMPTY_BATCH):
        predict_images(images=tf.zeros([0, 32, 32, 3]))


FUZZ_CHILD = """
import json, os, sys, time
import numpy as np
import tensorflow as tf
from resnext_tf.data import DataConfig, build_dataset, evaluation, transforms, unreadable

export_path, folder, good_name = sys.argv[1:]
serve = tf.saved_model.load(export_path).signatures["serving_default"]
names = sorted(n for n in os.listdir(folder) if n.endswith(".bin"))
items = [open(os.path.join(folder, n), "rb").read() for n in names]
good = open(good_name, "rb").read()
report = {"served": 0, "refused": 0, "violations": [], "slowest_s": 0.0}
for i, data in enumerate(items):
    position = i % 2  # the fuzzed image goes first or second in the request
    batch = [data, good] if position == 0 else [good, data]
    start = time.time()
    try:
        out = serve(image_bytes=tf.constant(batch))
        if out["classes"].shape != (2, 5) or not np.isfinite(out["logits"]).all():
            report["violations"].append([names[i], "bad output"])
        report["served"] += 1
    except tf.errors.InvalidArgumentError as e:
        message = str(e)
        if f"image {position}: " not in message or f"image {1 - position}" in message:
            report["violations"].append([names[i], message[-500:]])
        report["refused"] += 1
    report["slowest_s"] = max(report["slowest_s"], time.time() - start)

# The training decode: the per-image transforms inside the pipeline's error-catching map.
cfg = DataConfig("imagenet", image_size=32, eval_resize=37, fused_crop=False)
n = len(items)
data = tf.constant(items)
seeds = tf.stack([tf.range(n), tf.zeros([n], tf.int32)], axis=1)
accepted = {}
for split, transform in (
    ("train", lambda i, d, s: (i, transforms.imagenet_train(d, s, cfg)[0])),
    ("eval", lambda i, d, s: (i, evaluation.imagenet_eval(d, cfg))),
):
    found, images = unreadable.map_ignoring_errors((tf.range(n), data, seeds), transform)
    if not np.isfinite(images.numpy()).all():
        report["violations"].append([split, "non-finite image"])
    accepted[split] = sorted(int(k) for k in found.numpy())

# The same files in an ImageNet folder: every refused one is replaced and named.
root = os.path.join(folder, "imagenet")
for split in ("train", "val"):
    os.makedirs(os.path.join(root, split, "n0"))
    for name, item in zip(names, items):
        with open(os.path.join(root, split, "n0", name[:-4] + ".JPEG"), "wb") as f:
            f.write(item)
cfg = DataConfig("imagenet", data_dir=root, image_size=32, eval_resize=37, fused_crop=False, seed=1)
for split in ("train", "eval"):
    # A batch size that divides the number of files: a training epoch visits each of them.
    for images, labels in build_dataset(cfg, split, 20):
        if not np.isfinite(images.numpy()).all():
            report["violations"].append([split, "non-finite batch"])
report["accepted"] = accepted
report["files"] = names
print(json.dumps(report))
"""


def fuzz_items(rng):
    """Seeded images of every format, intact and damaged in the ways of FUZZ_KINDS."""
    bases = []
    for k in range(24):
        image = gradient(rng, *rng.integers(1, 90, 2))
        fmt, options = [
            ("JPEG", {"quality": 90}),
            ("JPEG", {"quality": 75, "progressive": True}),
            ("JPEG", {"mode": "CMYK"}),
            ("JPEG", {"mode": "L", "subsampling": 0}),
            ("PNG", {}),
            ("PNG", {"mode": "P"}),
            ("GIF", {}),
            ("BMP", {}),
            ("WEBP", {"quality": 70}),
            ("WEBP", {"lossless": True}),
        ][k % 10]
        bases.append(encode(image, fmt, **options))
    bases.append(with_jpeg_size(bases[0], 30000, 30000))
    bases.append(encode(gradient(rng, 2, 500)))

    def base():
        return bases[rng.integers(len(bases))]

    def flipped(data):
        data = bytearray(data)
        for at in rng.integers(0, len(data), rng.integers(1, 9)):
            data[at] = rng.integers(256)
        return bytes(data)

    def header(data):
        data = bytearray(data)
        for at in rng.integers(0, min(len(data), 64), rng.integers(1, 5)):
            data[at] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.integers(256)])
        return bytes(data)

    def garbage(_):
        magic = [b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBP"]
        return magic[rng.integers(len(magic))] + rng.bytes(rng.integers(0, 300))

    kinds = {
        "intact": lambda data: data,
        "truncated": lambda data: data[: rng.integers(0, len(data))],
        "flipped": flipped,
        "header": header,
        "garbage": garbage,
        "spliced": lambda data: data[: len(data) // 2] + base()[len(data) // 2 :],
    }
    return {
        f"{kind}-{i:03d}": damage(base())
        for kind, damage in kinds.items()
        for i in range(FUZZ_PER_KIND)
    }


def test_seeded_fuzz_serving_and_training_decode(exported, tmp_path):
    items = fuzz_items(np.random.default_rng(2024))
    assert len(items) % 20 == 0  # the batch size of the folder run
    for name, data in items.items():
        (tmp_path / f"{name}.bin").write_bytes(data)
    good = tmp_path / "good.jpg"
    good.write_bytes(export.sample_jpeg())
    report, stderr = run_child(
        FUZZ_CHILD, exported, str(tmp_path), str(good), timeout=FUZZ_TIMEOUT_S
    )
    assert report["violations"] == []
    assert report["served"] + report["refused"] == len(items)
    # Every kind of input occurs: served, refused, decodable or not.
    assert report["served"] > 50 and report["refused"] > 100
    assert report["slowest_s"] < 10
    # In the folder, the files the training decode refused are the ones replaced, by name.
    warned = {line.split('"')[1] for line in stderr.splitlines() if "unreadable image" in line}
    for split, folder in (("train", "train"), ("eval", "val")):
        refused = set(range(len(items))) - set(report["accepted"][split])
        expected = {
            os.path.join(tmp_path, "imagenet", folder, "n0", report["files"][k][:-4] + ".JPEG")
            for k in refused
        }
        assert {w for w in warned if f"/{folder}/" in w} == expected, split
