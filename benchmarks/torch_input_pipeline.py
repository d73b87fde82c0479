"""The peer input pipeline: a torchvision DataLoader with the fb.resnet ImageNet train augmentation.

    python -m benchmarks.torch_input_pipeline --data_dir DATA --workers 2 --batch_size 64

Reads DATA/train/<wnid>/*.JPEG with ImageFolder (PIL decode) in --workers processes and applies
RandomResizedCrop(224, scale (0.08, 1), ratio (3/4, 4/3), bicubic), ColorJitter(0.4, 0.4, 0.4),
ToTensor, PCA lighting (0.1), Normalize and a horizontal flip: the augmentation of
`resnext_tf.data` (docs/reference.md "Data"). Throughput is measured as benchmarks/input_pipeline.py
measures the tf.data side: per epoch, from the first batch to the last.
"""

import argparse
import json
import os

import torch
import torchvision
from torchvision.transforms import v2

from benchmarks import timing
from benchmarks.epoch_timing import images_per_second

# AlexNet PCA lighting and ImageNet mean/std (docs/reference.md "Data").
EIGVAL = (0.2175, 0.0188, 0.0045)
EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class Lighting(torch.nn.Module):
    """AlexNet PCA colour noise on a CHW float tensor: adds eigvec @ (alpha * eigval)."""

    def __init__(self, std):
        super().__init__()
        self.std = std
        self.eigval = torch.tensor(EIGVAL)
        self.eigvec = torch.tensor(EIGVEC)

    def forward(self, image):
        if self.std == 0:
            return image
        alpha = torch.randn(3) * self.std
        rgb = self.eigvec @ (alpha * self.eigval)
        return image + rgb.view(3, 1, 1)


def train_transform(image_size, lighting=0.1):
    """The fb.resnet training augmentation with torchvision transforms."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                image_size,
                scale=(0.08, 1.0),
                ratio=(3 / 4, 4 / 3),
                interpolation=v2.InterpolationMode.BICUBIC,
            ),
            v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            Lighting(lighting),
            v2.Normalize(MEAN, STD),
            v2.RandomHorizontalFlip(),
        ]
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="folder with train/<wnid>/*.JPEG")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image_size", type=int, default=224)
    args = parser.parse_args()

    dataset = torchvision.datasets.ImageFolder(
        os.path.join(args.data_dir, "train"), transform=train_transform(args.image_size)
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    rate = images_per_second(lambda _: loader, args.epochs)
    print(f"torchvision DataLoader, {args.workers} workers: {rate:.1f} images/s")
    result = {
        "framework": "torchvision",
        "pipeline": "DataLoader+ImageFolder",
        "workers": args.workers,
        "batch_size": args.batch_size,
        "images": len(dataset),
        "images_per_sec": round(rate, 1),
        "load_avg": timing.machine_load(),
    }
    print(timing.JSON_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
