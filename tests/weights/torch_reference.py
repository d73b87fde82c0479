"""Writes a torchvision ResNet/ResNeXt with random weights, an input batch and its logits.

    python torch_reference.py OUT_DIR resnext50_32x4d 224
    python torch_reference.py OUT_DIR small:2:4 64      # ResNet-50 layout, groups 2, width 4

Writes OUT_DIR/model.pth (the state dict), OUT_DIR/x.npy (NHWC input) and OUT_DIR/logits.npy
(fp32 eval mode). It runs as its own process: importing torchvision (which loads triton) after
TensorFlow crashes the process, so the reference never shares one with the Keras model.
"""

import os
import sys

import numpy as np
import torch
import torchvision
from torchvision.models import resnet

SMALL_CLASSES = 10


def build(arch):
    if arch.startswith("small:"):
        _, groups, width = arch.split(":")
        return resnet.ResNet(
            resnet.Bottleneck,
            [3, 4, 6, 3],
            num_classes=SMALL_CLASSES,
            groups=int(groups),
            width_per_group=int(width),
        )
    return getattr(torchvision.models, arch)()


def randomize_batch_norm(model, generator):
    """Random affine parameters and running statistics, so the conversion of each shows."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.uniform_(-0.2, 0.2, generator=generator)
                m.running_mean.uniform_(-0.2, 0.2, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)


def main(out_dir, arch, size):
    torch.manual_seed(0)
    model = build(arch)
    randomize_batch_norm(model, torch.Generator().manual_seed(1))
    model.eval()
    x = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    torch.save(model.state_dict(), os.path.join(out_dir, "model.pth"))
    np.save(os.path.join(out_dir, "x.npy"), x)
    np.save(os.path.join(out_dir, "logits.npy"), logits)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
