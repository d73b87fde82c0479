"""python -m resnext_tf.predict (see resnext_tf.predict.cli)."""

from resnext_tf.predict.cli import main

raise SystemExit(main())
