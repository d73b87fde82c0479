"""Published weights by name: where they come from, their licence, download and local cache.

A known name (`KNOWN_NAMES`) always means the published file, checked against the SHA-256
prefix in its name on download and on each use; anything else, and any os.PathLike, is a path.
Files without a published checksum (the Torch7 models) are used by path only (docs/weights.md).
"""

import dataclasses
import hashlib
import logging
import os
import re
import urllib.request

from resnext_tf import fileio
from resnext_tf.errors import WeightsError

logger = logging.getLogger(__name__)

# Cache root: $RESNEXT_TF_CACHE, else resnext_tf/ in $KERAS_HOME or ~/.keras (as Keras' own).
CACHE_ENV = "RESNEXT_TF_CACHE"
DOWNLOADS, CONVERTED = "downloads", "converted"
# torch hub convention: "-<first hex digits of the sha256>." in the file name.
HASH_IN_NAME = re.compile(r"-([0-9a-f]{6,64})\.")
# Downloads: the largest published file is below 0.4 GB; a server sending more is refused.
MAX_DOWNLOAD_BYTES = 2 << 30
DOWNLOAD_TIMEOUT_S = 60
DOWNLOAD_SCHEMES = ("https://", "http://")

BSD = "BSD-3-Clause (torchvision)"
APACHE = "Apache-2.0 (timm)"
CC_BY_NC = "CC BY-NC 4.0, non-commercial use only"

TORCHVISION = "https://download.pytorch.org/models/"
TIMM_RSB = "https://github.com/huggingface/pytorch-image-models/releases/download/v0.1-rsb-weights/"
TIMM = "https://github.com/rwightman/pytorch-image-models/releases/download/"
FB_SEMI = "https://dl.fbaipublicfiles.com/semiweaksupervision/model_files/"
FB_TORCH7 = "https://s3.amazonaws.com/resnext/imagenet_models/"
SSL = "semi-supervised on YFCC100M, fine-tuned on ImageNet"
SWSL = "semi-weakly supervised on IG-1B, fine-tuned on ImageNet"


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
        "fb_ssl": _fb(FB_SEMI + "semi_supervised_resnext50_32x4-ddb3e555.pth", SSL),
        "fb_swsl": _fb(FB_SEMI + "semi_weakly_supervised_resnext50_32x4-72679e44.pth", SWSL),
        "fb_torch7": _fb(FB_TORCH7 + "resnext_50_32x4d.t7", "original Torch7 model, top-1 77.8"),
    },
    "resnext101_32x4d": {
        "fb_ssl": _fb(FB_SEMI + "semi_supervised_resnext101_32x4-dc43570a.pth", SSL),
        "fb_swsl": _fb(FB_SEMI + "semi_weakly_supervised_resnext101_32x4-3f87e46b.pth", SWSL),
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
    name: "torchvision_v1" for name, tags in PRETRAINED.items() if "torchvision_v1" in tags
}
# Strings that are weight names and never paths.
KNOWN_NAMES = frozenset({IMAGENET, *(tag for tags in PRETRAINED.values() for tag in tags)})


class WeightsUnavailable(WeightsError, FileNotFoundError):
    """Published weights that are not in the cache and cannot be downloaded now."""


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


def fetch(entry):
    """Returns the local path of the `Pretrained` file `entry`, downloaded on first use.

    Raises:
      WeightsError: when the file has no published checksum, or its SHA-256 does not start with
        the published prefix (the file is removed).
      WeightsUnavailable: when it cannot be downloaded; the message says where to put it.
    """
    path = os.path.join(cache_dir(DOWNLOADS), entry.filename)
    expected = entry.sha256_prefix
    if expected is None:
        raise WeightsError(
            f"{entry.filename} has no published checksum, so it is not used by name: nothing "
            f"could check that a file is the published one. Download {entry.url} yourself "
            f"and pass the file's path as `weights`. Licence: {entry.licence}."
        )
    manual = (
        f"Download {entry.url} yourself (e.g. curl -L -o {path} {entry.url}) and place it at "
        f"{path}, or pass the file's path as `weights`. Licence: {entry.licence}."
    )
    if not os.path.exists(path):
        _download(entry, path, manual)
    elif not fileio.sha256_of(path).startswith(expected):
        os.remove(path)
        raise WeightsError(
            f"{path} does not match its published SHA-256 prefix {expected}; the file was "
            f"removed. {manual}"
        )
    logger.info("Weights %s (%s). Licence: %s.", entry.filename, entry.description, entry.licence)
    if entry.licence == CC_BY_NC:
        logger.warning("%s is licensed %s.", entry.filename, CC_BY_NC)
    return path


def _download(entry, path, manual):
    """Downloads `entry` to `path`, hashed and bounded (MAX_DOWNLOAD_BYTES) as it streams into
    a temporary file that is renamed onto `path` only when the hash matched."""
    if not entry.url.startswith(DOWNLOAD_SCHEMES):
        raise WeightsError(f"Refusing to download {entry.url}: expected an http(s) URL.")
    logger.info("Downloading %s (licence: %s).", entry.url, entry.licence)
    digest = hashlib.sha256()
    try:
        with (
            urllib.request.urlopen(entry.url, timeout=DOWNLOAD_TIMEOUT_S) as response,
            fileio.atomic_path(path) as tmp,
        ):
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > MAX_DOWNLOAD_BYTES:
                raise WeightsError(_too_large(entry, f"announces {length} bytes, more"))
            received = 0
            with open(tmp, "xb") as out:
                while chunk := response.read(1 << 20):
                    received += len(chunk)
                    if received > MAX_DOWNLOAD_BYTES:
                        raise WeightsError(_too_large(entry, "sent more"))
                    digest.update(chunk)
                    out.write(chunk)
            if not digest.hexdigest().startswith(entry.sha256_prefix):
                raise WeightsError(
                    f"The download of {entry.url} does not match its published SHA-256 prefix "
                    f"{entry.sha256_prefix} (received {received} bytes, SHA-256 "
                    f"{digest.hexdigest()[:16]}...); it was discarded. {manual}"
                )
    except WeightsError:
        raise
    except Exception as e:  # URLError, HTTPError, timeouts (OSErrors), malformed responses
        raise WeightsUnavailable(f"Could not download {entry.filename}: {e}. {manual}") from e


def _too_large(entry, what):
    return (
        f"Refusing the download of {entry.url}: the server {what} than the "
        f"{MAX_DOWNLOAD_BYTES} bytes any published weights file needs."
    )


def resolve_weights(weights, model_name):
    """Turns a `weights` argument into a local file path (see the module docstring).

    Args:
      weights: None, a name of `list_pretrained(model_name)` ("imagenet" is the model's default
        tag), or the path of an existing weights file ("./imagenet" for a file of that name).
      model_name: Registry name of the architecture, e.g. "resnext50_32x4d".

    Returns:
      None for None, else the path of the file (downloaded and verified for known names).

    Raises:
      WeightsError: for a known name that this model has no weights for, a name without a
        published checksum, a path that is not an existing file, or a hash mismatch.
      WeightsUnavailable: when a known file is not available offline (see `fetch`).
    """
    if weights is None:
        return None
    if isinstance(weights, os.PathLike):
        return _existing_file(os.fspath(weights), model_name)
    if not isinstance(weights, str):
        raise WeightsError(
            f"Expected weights=None, a weight name or a path; received a {type(weights).__name__}."
        )
    if weights in KNOWN_NAMES:
        entry = lookup(weights, model_name)
        if entry is None:
            raise WeightsError(
                f"Unknown weights for {model_name or 'this architecture'}; received "
                f"weights={weights!r}, a published name that this architecture has no weights "
                f"for; expected one of {list_pretrained(model_name)}, or a path (a local file "
                f"of that name is ./{weights})."
            )
        return fetch(entry)
    return _existing_file(weights, model_name)


def _existing_file(weights, model_name):
    path = os.path.expanduser(weights)
    if os.path.isfile(path):
        return path
    if os.path.exists(path):
        raise WeightsError(f"weights={weights!r} is not a file; expected a weights file.")
    raise WeightsError(
        f"Unknown weights for {model_name or 'this architecture'}; received "
        f"weights={weights!r}, which is no existing file; expected None, the path of an "
        f"existing file, or one of {list_pretrained(model_name)}."
    )
