"""Throughput of the ImageNet training input pipeline, fused crop decode against full decode.

Without --data_dir it writes --num_images JPEGs of --photo_size (default 500x375, the size of a
typical ImageNet photo; quality 90, smooth gradients with texture and noise) into a temporary
folder first. --stages also times the pipeline's parts without the unreadable-file handling:
the per-image transform alone, then with the per-batch colour maps.

    python -m benchmarks.input_pipeline --num_images 512 --batch_size 64 --epochs 3
"""

import argparse
import glob
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
from PIL import Image

from benchmarks.epoch_timing import images_per_second
from resnext_tf.data import DataConfig, build_dataset, dataset_spec, transforms

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


def stage(cfg, batch_size, colour):
    """epoch -> batches of transforms.imagenet_train over the train files in a plain parallel
    map, with apply_color per batch when `colour`."""
    paths = sorted(glob.glob(os.path.join(cfg.data_dir, "train", "*", "*")))
    autotune = tf.data.AUTOTUNE

    def example(path, seed):
        return transforms.imagenet_train(tf.io.read_file(path), seed, cfg), 0

    def finish(out, labels):
        return (transforms.apply_color(*out) if colour else out[0]), labels

    def make_epoch(epoch):
        seeds = tf.random.experimental.stateless_split([cfg.seed, epoch], len(paths))
        ds = tf.data.Dataset.from_tensor_slices((paths, seeds)).shuffle(len(paths), epoch)
        ds = ds.map(example, num_parallel_calls=autotune, deterministic=True)
        ds = ds.batch(batch_size, drop_remainder=True)
        return ds.map(finish, num_parallel_calls=autotune, deterministic=True).prefetch(autotune)

    return make_epoch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", help="ImageNet folder with train/; default: generated JPEGs")
    parser.add_argument("--num_images", type=int, default=512)
    parser.add_argument("--photo_size", default=PHOTO_SIZE, help="generated JPEGs, WIDTHxHEIGHT")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--stages", action="store_true", help="also time the parts")
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
        for colour in (False, True) if args.stages else ():
            rate = images_per_second(stage(cfg, args.batch_size, colour), args.epochs)
            parts = "imagenet_train" + (" + apply_color" if colour else "")
            print(f"stage {parts}: {rate:.1f} images/s")
    finally:
        if not args.data_dir:
            shutil.rmtree(data_dir)


if __name__ == "__main__":
    main()
