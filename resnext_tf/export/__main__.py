"""python -m resnext_tf.export (see resnext_tf.export.cli)."""

from resnext_tf.export.cli import main

raise SystemExit(main())
