"""Published weights by name: where they come from, their licence, download and local cache.

Files named in the torch hub convention (`name-<hash>.pth`) carry the first hex digits of their
SHA-256; a download is accepted only when its hash starts with them. The original Torch7 models
publish no checksum, so they are never downloaded automatically: the error says where to put
the file.
"""

import dataclasses
import hashlib
import logging
import os
import re

logger = logging.getLogger(__name__)

# Cache root: $RESNEXT_TF_CACHE, else <Keras home>/resnext_tf (Keras home is $KERAS_HOME or
# ~/.keras, where keras.applications keeps its weights).
CACHE_ENV = "RESNEXT_TF_CACHE"
DOWNLOADS, CONVERTED = "downloads", "converted"
# torch hub convention: "-<first hex digits of the sha256>." in the file name.
HASH_IN_NAME = re.compile(r"-([0-9a-f]{6,64})\.")

BSD = "BSD-3-Clause (torchvision)"
APACHE = "Apache-2.0 (timm)"
CC_BY_NC = "CC BY-NC 4.0, non-commercial use only"

TORCHVISION = "https://download.pytorch.org/models/"
TIMM_RSB = "https://github.com/huggingface/pytorch-image-models/releases/download/v0.1-rsb-weights/"
TIMM = "https://github.com/rwightman/pytorch-image-models/releases/download/"
FB_SEMI = "https://dl.fbaipublicfiles.com/semiweaksupervision/model_files/"
FB_TORCH7 = "https://s3.amazonaws.com/resnext/imagenet_models/"


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """One published weight file.

    Attributes:
      url: Download address.
      licence: Licence of the weights.
      description: Who trained them and how (accuracy as published).
    """

    url: str
    licence: str
    description: str

    @property
    def filename(self):
        return self.url.rpartition("/")[2]

    @property
    def sha256_prefix(self):
        """Leading hex digits of the file's SHA-256, or None when none is published."""
        match = HASH_IN_NAME.search(self.filename)
        return match[1] if match else None


def _tv(file, top1):
    return Pretrained(TORCHVISION + file, BSD, f"torchvision, ImageNet top-1 {top1}")


def _timm(url, recipe):
    return Pretrained(url, APACHE, f"timm, ResNet Strikes Back recipe {recipe}")


def _fb(url, what):
    return Pretrained(url, CC_BY_NC, f"Facebook AI, {what}")


# model name -> tag -> weights. The tags follow torchvision's enum (v1/v2) and timm's
# pretrained tags; the sha256 prefixes are in the file names (torchvision/models/resnet.py).
PRETRAINED = {
    "resnext50_32x4d": {
        "torchvision_v1": _tv("resnext50_32x4d-7cdf4587.pth", 77.618),
        "torchvision_v2": _tv("resnext50_32x4d-1a0047aa.pth", 81.198),
        "timm_a1h": _timm(TIMM + "v0.1-rsb-weights/resnext50_32x4d_a1h-0146ab0a.pth", "A1h"),
        "timm_a1": _timm(TIMM_RSB + "resnext50_32x4d_a1_0-b5a91a1d.pth", "A1"),
        "timm_a2": _timm(TIMM_RSB + "resnext50_32x4d_a2_0-efc76add.pth", "A2"),
        "timm_a3": _timm(TIMM_RSB + "resnext50_32x4d_a3_0-3e450271.pth", "A3"),
        "fb_ssl": _fb(
            FB_SEMI + "semi_supervised_resnext50_32x4-ddb3e555.pth",
            "semi-supervised on YFCC100M, fine-tuned on ImageNet",
        ),
        "fb_swsl": _fb(
            FB_SEMI + "semi_weakly_supervised_resnext50_32x4-72679e44.pth",
            "semi-weakly supervised on IG-1B, fine-tuned on ImageNet",
        ),
        "fb_torch7": _fb(FB_TORCH7 + "resnext_50_32x4d.t7", "original Torch7 model, top-1 77.8"),
    },
    "resnext101_32x4d": {
        "fb_ssl": _fb(
            FB_SEMI + "semi_supervised_resnext101_32x4-dc43570a.pth",
            "semi-supervised on YFCC100M, fine-tuned on ImageNet",
        ),
        "fb_swsl": _fb(
            FB_SEMI + "semi_weakly_supervised_resnext101_32x4-3f87e46b.pth",
            "semi-weakly supervised on IG-1B, fine-tuned on ImageNet",
        ),
        "fb_torch7": _fb(FB_TORCH7 + "resnext_101_32x4d.t7", "original Torch7 model, top-1 78.8"),
    },
    "resnext101_32x8d": {
        "torchvision_v1": _tv("resnext101_32x8d-8ba56ff5.pth", 79.312),
        "torchvision_v2": _tv("resnext101_32x8d-110c445d.pth", 82.834),
        "fb_wsl": _fb(
            TORCHVISION + "ig_resnext101_32x8-c38310e5.pth",
            "weakly supervised on IG-940M, fine-tuned on ImageNet",
        ),
    },
    "resnext101_64x4d": {
        "torchvision_v1": _tv("resnext101_64x4d-173b62eb.pth", 83.246),
        "timm_c1": _timm(TIMM + "v0.1-tpu-weights/resnext101_64x4d_c-0d0e0cc0.pth", "C1"),
        "fb_torch7": _fb(FB_TORCH7 + "resnext_101_64x4d.t7", "original Torch7 model, top-1 79.6"),
    },
    "resnet50": {
        "torchvision_v1": _tv("resnet50-0676ba61.pth", 76.130),
        "torchvision_v2": _tv("resnet50-11ad3fa6.pth", 80.858),
        "timm_a1": _timm(TIMM + "v0.1-rsb-weights/resnet50_a1_0-14fe96d1.pth", "A1"),
    },
    "resnet101": {
        "torchvision_v1": _tv("resnet101-63fe2227.pth", 77.374),
        "torchvision_v2": _tv("resnet101-cd907fc2.pth", 81.886),
    },
    "resnet152": {
        "torchvision_v1": _tv("resnet152-394f9c45.pth", 78.312),
        "torchvision_v2": _tv("resnet152-f82ba261.pth", 82.284),
    },
}
# What weights="imagenet" means for each model: the supervised ImageNet-1k weights closest to
# the original recipe (torchvision's v1 recipe is fb.resnet.torch's).
IMAGENET = "imagenet"
DEFAULT_TAG = {
    "resnext50_32x4d": "torchvision_v1",
    "resnext101_32x8d": "torchvision_v1",
    "resnext101_64x4d": "torchvision_v1",
    "resnet50": "torchvision_v1",
    "resnet101": "torchvision_v1",
    "resnet152": "torchvision_v1",
}


def cache_dir(*parts):
    """The local cache folder (created), optionally a subfolder of it."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
        root = os.path.join(keras_home, "resnext_tf")
    path = os.path.join(root, *parts)
    os.makedirs(path, exist_ok=True)
    return path


def list_pretrained(model_name=None):
    """Known weight names: {model: [tags]} or, for one model, its tags ("imagenet" first)."""
    if model_name is not None:
        tags = sorted(PRETRAINED.get(model_name, {}))
        return ([IMAGENET] if model_name in DEFAULT_TAG else []) + tags
    return {name: list_pretrained(name) for name in sorted(PRETRAINED)}


def lookup(weights, model_name):
    """The `Pretrained` entry of a known weight name, or None when `weights` is not one."""
    tag = DEFAULT_TAG.get(model_name, weights) if weights == IMAGENET else weights
    return PRETRAINED.get(model_name, {}).get(tag)


def sha256_of(path):
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(entry):
    """Returns the local path of a published file, downloading it on first use.

    Args:
      entry: A `Pretrained`.

    Returns:
      The path of the verified file in the cache.

    Raises:
      FileNotFoundError: when the file has no published checksum and is not in the cache yet,
        or cannot be downloaded (offline); the message gives the URL and where to put it.
      ValueError: when the file's SHA-256 does not start with the published prefix.
    """
    path = os.path.join(cache_dir(DOWNLOADS), entry.filename)
    expected = entry.sha256_prefix
    manual = (
        f"Download {entry.url} yourself (e.g. curl -L -o {path} {entry.url}) and place it at "
        f"{path}, or pass the file's path as `weights`. Licence: {entry.licence}."
    )
    if not os.path.exists(path):
        if expected is None:
            raise FileNotFoundError(
                f"{entry.filename} has no published checksum, so it is not downloaded "
                f"automatically. {manual}"
            )
        _download(entry, path, manual)
    if expected is not None and not sha256_of(path).startswith(expected):
        os.remove(path)
        raise ValueError(
            f"{path} does not match its published SHA-256 prefix {expected}; the file was "
            f"removed. {manual}"
        )
    logger.info("Weights %s (%s). Licence: %s.", entry.filename, entry.description, entry.licence)
    if entry.licence == CC_BY_NC:
        logger.warning("%s is licensed %s.", entry.filename, CC_BY_NC)
    return path


def _download(entry, path, manual):
    import keras

    logger.info("Downloading %s (licence: %s).", entry.url, entry.licence)
    try:
        keras.utils.get_file(
            entry.filename,
            origin=entry.url,
            cache_dir=os.path.dirname(os.path.dirname(path)),
            cache_subdir=DOWNLOADS,
        )
    except Exception as e:  # get_file raises a bare Exception for network errors
        raise FileNotFoundError(f"Could not download {entry.filename}: {e}. {manual}") from e


def resolve_weights(weights, model_name):
    """Turns a `weights` argument into a local file path.

    Args:
      weights: None; a path to an existing weights file; "imagenet" (the model's default
        published ImageNet weights); or a tag of `list_pretrained(model_name)`, such as
        "torchvision_v2" or "timm_a1h".
      model_name: Registry name of the architecture, e.g. "resnext50_32x4d".

    Returns:
      None for None, else the path of the file (downloaded and verified for known names).

    Raises:
      ValueError: for a name that is neither a file nor a known name for this model.
      FileNotFoundError: when a known file is not available offline (see `fetch`).
    """
    if weights is None:
        return None
    weights = os.fspath(weights)
    if os.path.exists(os.path.expanduser(weights)):
        return os.path.expanduser(weights)
    entry = lookup(weights, model_name)
    if entry is None:
        raise ValueError(
            f"Unknown weights for {model_name or 'this architecture'}; received "
            f"weights={weights!r}; expected None, the path of an existing file, or one of "
            f"{list_pretrained(model_name)}."
        )
    return fetch(entry)
