"""Converts published Torch weights into a Keras .weights.h5 file for a resnext_tf model.

    python -m resnext_tf.weights.convert --src resnext50_32x4d-7cdf4587.pth \
        --model resnext50_32x4d --out resnext50_32x4d.weights.h5

--src is a .pth/.pt/.bin (torchvision/timm state dict, needs torch), .safetensors, or .t7
(original Torch7 model) file, or a known name such as "imagenet", "torchvision_v2" or
"timm_a1h" (downloaded and verified; a file of such a name is given as ./imagenet). A file that
cannot be used ends the command with a one-line error and exit code 2.
"""

import argparse
import logging

from resnext_tf.errors import user_errors_exit
from resnext_tf.registry import create_model, list_models
from resnext_tf.weights.loading import naming_errors, read_source, save_weights_atomic
from resnext_tf.weights.pretrained import resolve_weights
from resnext_tf.weights.state_dict import CLASSIFIER, assign_state_dict


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m resnext_tf.weights.convert", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--src", required=True, help="weight file or known weight name")
    parser.add_argument("--model", required=True, choices=list_models(), help="architecture")
    parser.add_argument("--out", required=True, help="output path ending in .weights.h5")
    parser.add_argument(
        "--num_classes",
        type=int,
        default=None,
        help="classifier size; by default the source's",
    )
    parser.add_argument(
        "--skip_classifier",
        action="store_true",
        help="keep a freshly initialised classifier instead of the source's",
    )
    return parser.parse_args(argv)


@user_errors_exit
def main(argv=None):
    """Runs the conversion; returns the process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    src = resolve_weights(args.src, args.model)
    state = read_source(src)
    num_classes = args.num_classes
    classifier = state.get(f"{CLASSIFIER}.weight")
    if num_classes is None and classifier is not None and classifier.ndim == 2:
        num_classes = int(classifier.shape[0])
    model = create_model(args.model, **({"num_classes": num_classes} if num_classes else {}))
    with naming_errors(src):
        assign_state_dict(model, state, skip_classifier=args.skip_classifier)
    save_weights_atomic(model, args.out)
    print(
        f"Wrote {args.out}: {args.model}, {model.output_shape[-1]} classes, "
        f"{len(state)} source tensors."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
