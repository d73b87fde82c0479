"""Top-k classes of image files and folders, from a registry model with weights, a training run
or an export: `python -m resnext_tf.predict` (resnext_tf.predict.cli)."""
