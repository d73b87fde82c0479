"""Peak memory one serving_default request adds, per image, at the export's default limits.

    python -m benchmarks.serving_memory [--folder=/tmp/serving_memory]

Exports a tiny 224x224 ImageNet model, writes JPEGs of several sizes (a photo, the widest image
the aspect limit allows, images at the pixel limit, strips and a header-only bomb the limits
refuse), and serves each in a fresh process after a warm-up request on a 640x480 JPEG, printing
the ru_maxrss it added. docs/safety.md has the figures.
"""

import argparse
import os
import subprocess
import sys

import numpy as np
from PIL import Image

# name -> (height, width[, PIL mode and save options]); the last entry is a small JPEG whose
# header promises 20000x20000. Progressive JPEGs make libjpeg hold every coefficient at once:
# 3 components unsubsampled at the pixel limit, and the largest 4-component (CMYK) one allowed.
IMAGES = {
    "photo_3000x4000": (3000, 4000),
    "aspect_limit_256x12800": (256, 12800),
    "limits_1300x65000": (1300, 65000),
    "pixel_limit_9459x9459": (9459, 9459),
    "progressive_444_9459x9459": (9459, 9459, "RGB", {"progressive": True, "subsampling": 0}),
    "progressive_cmyk_8191x8192": (8191, 8192, "CMYK", {"progressive": True}),
    "strip_1x65000": (1, 65000),
    "bomb_header_20000x20000": (16, 16),
}

SERVE_ONE = """
import resource, sys
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
read = lambda path: open(path, "rb").read()
serve(image_bytes=tf.constant([read(sys.argv[2])]))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    serve(image_bytes=tf.constant([read(sys.argv[3])]))
    outcome = "served"
except tf.errors.InvalidArgumentError as e:
    outcome = str(e).split("assertion failed: ")[-1].splitlines()[0]
added = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024
print(f"+{added} MiB  {outcome}")
"""


def write_jpeg(path, height, width, rng, mode="RGB", options=None):
    small = rng.integers(0, 255, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BILINEAR).convert(mode)
    image.save(path, "JPEG", quality=90, **(options or {}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", default="/tmp/resnext_tf_serving_memory")
    args = parser.parse_args(argv)
    os.makedirs(args.folder, exist_ok=True)
    rng = np.random.default_rng(0)
    normal = os.path.join(args.folder, "normal.jpg")
    write_jpeg(normal, 480, 640, rng)
    paths = {}
    for name, (height, width, *how) in IMAGES.items():
        paths[name] = os.path.join(args.folder, name + ".jpg")
        write_jpeg(paths[name], height, width, rng, *how)
    with open(paths["bomb_header_20000x20000"], "rb") as f:
        data = f.read()
    at = data.find(b"\xff\xc0")  # the frame header: height, then width
    size = (20000).to_bytes(2, "big") * 2
    with open(paths["bomb_header_20000x20000"], "wb") as f:
        f.write(data[: at + 5] + size + data[at + 9 :])
    export = (
        "import sys, keras, resnext_tf; from resnext_tf import export; "
        "keras.utils.set_random_seed(0); "
        "m = resnext_tf.build_resnext(50, cardinality=2, base_width=4); "
        "print(export.export_saved_model(m, sys.argv[1], 'tiny', 1, overwrite=True, warmup=False))"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, "-c", export, args.folder], env=env, capture_output=True, text=True
    )
    saved_model = out.stdout.strip().splitlines()[-1]
    for name, path in paths.items():
        result = subprocess.run(
            [sys.executable, "-c", SERVE_ONE, saved_model, normal, path],
            env=env,
            capture_output=True,
            text=True,
        )
        lines = result.stdout.strip().splitlines() or [result.stderr.strip()[-300:]]
        print(f"{name}: {os.path.getsize(path)} bytes: {lines[-1]}", flush=True)


if __name__ == "__main__":
    main()
