"""Training system of resnext_tf: the fb.resnet.torch recipe on tf.distribute (TensorFlow).

`run(TrainConfig(...))` trains or evaluates; the pieces (TorchSGD, schedules, checkpoints,
strategies, logs) live in their own modules. `optimizer`, `schedules` and `config` do not import
TensorFlow (the optimizer runs on any Keras backend), so `run` is imported on first use.
"""

from resnext_tf.training.config import TrainConfig

_MAIN_NAMES = ("EXIT_NON_FINITE_LOSS", "EXIT_OK", "run")
_TRAINER_NAMES = ("Trainer",)

__all__ = ["TrainConfig", *_MAIN_NAMES, *_TRAINER_NAMES]


def __getattr__(name):
    # TensorFlow only when needed.
    if name in _MAIN_NAMES:
        from resnext_tf.training import main

        return getattr(main, name)
    if name in _TRAINER_NAMES:
        from resnext_tf.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
