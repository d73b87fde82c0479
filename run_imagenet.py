"""Train or evaluate ResNeXt on ImageNet with the original recipe.

    python run_imagenet.py --data_dir=DATA --depth=50 --cardinality=32 --base_width=4 \
        --batch_size=256

--help lists the flags by group; docs/training.md explains them.
"""

from absl import app

import flags as resnext_flags
from resnext_tf import job
from resnext_tf.errors import user_errors_exit

resnext_flags.define_flags(datasets=("imagenet",))


@user_errors_exit  # a bad data_dir, held lock or damaged checkpoint: one line, exit 2
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    return job.run(resnext_flags.config_from_flags())


if __name__ == "__main__":
    app.run(main, flags_parser=resnext_flags.parse_flags)
