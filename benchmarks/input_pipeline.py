"""Throughput of the ImageNet training input pipeline, fused crop decode against full decode.

Without --data_dir it writes --num_images JPEGs of --photo_size (default 500x375, the size of a
typical ImageNet photo; quality 90, smooth gradients with texture and noise) into a temporary
folder first.

    python benchmarks/input_pipeline.py --num_images 512 --batch_size 64 --epochs 3
"""

import argparse
import os
import shutil
import tempfile

import numpy as np
from epoch_timing import images_per_second
from PIL import Image

from resnext_tf.data import DataConfig, build_dataset, dataset_spec

# Typical ImageNet photo size (width x height) and JPEG quality of the generated images.
PHOTO_SIZE = "500x375"
JPEG_QUALITY = 90
NUM_CLASSES = 4


def write_jpegs(root, count, width, height, seed=0):
    """Writes `count` natural-looking JPEGs as root/train/<class>/<i>.JPEG."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / width
    for i in range(count):
        folder = os.path.join(root, "train", f"n{i % NUM_CLASSES:08d}")
        os.makedirs(folder, exist_ok=True)
        f = rng.uniform(1, 6, 3)
        p = rng.uniform(0, 2 * np.pi, 3)
        smooth = [128 + 90 * np.sin(f[k] * x + p[k]) * np.cos(f[(k + 1) % 3] * y) for k in range(3)]
        image = np.stack(smooth, -1) + rng.normal(0, 12, (height, width, 3))
        image = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
        image.save(os.path.join(folder, f"{i}.JPEG"), quality=JPEG_QUALITY)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", help="ImageNet folder with train/; default: generated JPEGs")
    parser.add_argument("--num_images", type=int, default=512)
    parser.add_argument("--photo_size", default=PHOTO_SIZE, help="generated JPEGs, WIDTHxHEIGHT")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image_size", type=int, default=224)
    args = parser.parse_args()

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="resnext_tf_jpegs_")
    try:
        if not args.data_dir:
            width, height = (int(v) for v in args.photo_size.split("x"))
            write_jpegs(data_dir, args.num_images, width, height)
        cfg = DataConfig("imagenet", data_dir=data_dir, image_size=args.image_size)
        print(f"{dataset_spec(cfg).num_train} train images in {data_dir}, batch {args.batch_size}")
        rates = {}
        for fused in (True, False):
            fused_cfg = DataConfig(
                "imagenet", data_dir=data_dir, image_size=args.image_size, fused_crop=fused
            )
            rates[fused] = images_per_second(
                lambda epoch, c=fused_cfg: build_dataset(c, "train", args.batch_size, epoch=epoch),
                args.epochs,
            )
            print(f"fused_crop={fused}: {rates[fused]:.1f} images/s")
        print(f"fused / full decode: {rates[True] / rates[False]:.2f}x")
    finally:
        if not args.data_dir:
            shutil.rmtree(data_dir)


if __name__ == "__main__":
    main()
