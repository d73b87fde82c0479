"""Errors a user can fix, and how the command-line entry points report them.

A `UserError` means the input or the environment is wrong (a missing data folder, a file that is
not what its name says, a model_dir held by another run), not that the library is broken. The
entry points (`run_cifar.py`, `run_imagenet.py`, `python -m resnext_tf.export`, ...) print its
message as one line on stderr and exit with `EXIT_USER_ERROR`, without a Python traceback; set
the environment variable named by `TRACEBACK_ENV` to 1 to see the traceback as well.

A `WorkerLostError` (a multi-worker run lost one of its workers) is reported the same way, with
`EXIT_WORKER_LOST`, which asks whoever runs the workers to start them all again.

Subclasses also derive from the built-in error a caller would otherwise catch (ValueError,
FileNotFoundError, ...), so library callers keep working unchanged.
"""

import functools
import os
import sys

# Process exit code of an entry point that stopped on a UserError (absl and argparse use 2 for
# a bad command line too).
EXIT_USER_ERROR = 2
# Process exit code of a worker of a multi-worker run that stopped because another worker was
# lost, or never joined (sysexits' EX_TEMPFAIL: rerunning every worker resumes the run).
EXIT_WORKER_LOST = 75
# Set to 1 to print the traceback of a UserError as well as its one-line message.
TRACEBACK_ENV = "RESNEXT_TF_TRACEBACK"


class UserError(Exception):
    """Bad input or environment; the message names the value and says what to do."""


class DataError(UserError, ValueError):
    """A data file or folder is missing, damaged, or not in the expected format."""


class WeightsError(UserError, ValueError):
    """A weights file or name cannot be used: damaged, crafted, wrong format or shape."""


class CheckpointError(UserError, RuntimeError):
    """No checkpoint in a model_dir can be restored, or the model_dir refuses the run."""


class ExportError(UserError, ValueError):
    """An export cannot be written where or as asked (name, version, folder, dependencies)."""


class LockedError(UserError, RuntimeError):
    """Another live process holds the model_dir."""


class WorkerLostError(RuntimeError):
    """A worker of a multi-worker run was lost or never joined; the others stop.

    Not a UserError: nothing in the command is wrong, and rerunning it on every worker resumes
    the run from its last checkpoint.
    """


def check_choice(name, value, allowed):
    """Raises ValueError, naming the value and the choices, unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"Unknown {name}; received {name}={value!r}; expected one of {allowed}.")


def show_traceback():
    """Whether the user asked for tracebacks of user errors."""
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def one_line(message):
    """The message on one line (the entry points print user errors as a single line)."""
    return " ".join(str(message).split())


def report(error, stream=None):
    """Writes `error` as the one-line `error: ...` report of the entry points."""
    stream = stream if stream is not None else sys.stderr
    if show_traceback():
        import traceback

        traceback.print_exception(error, file=stream)
    print(f"error: {one_line(error)}", file=stream)
    stream.flush()


def user_errors_exit(main):
    """Decorates an entry point's main: a UserError becomes a one-line report and exit code 2,
    a WorkerLostError one with exit code EXIT_WORKER_LOST."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            report(e)
            # SystemExit from inside absl's app.run ends the process with this code.
            raise SystemExit(EXIT_USER_ERROR) from None
        except WorkerLostError as e:
            report(e)
            sys.stdout.flush()
            # Once a worker is lost, TensorFlow's runtime can hang or crash while it shuts down
            # (its collectives and coordination service wait for the lost task): end at once.
            os._exit(EXIT_WORKER_LOST)

    return wrapper


def renamed_flags(argv, renamed, stream=None):
    """`argv` with each old flag name of `renamed` ({old: new}) replaced by its new one, and a
    one-line deprecation warning on stderr for each (the old names keep working)."""
    stream = stream if stream is not None else sys.stderr
    result = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if name in renamed:
            print(f"warning: {name} is deprecated; use {renamed[name]}", file=stream)
            arg = renamed[name] + sep + value
        result.append(arg)
    return result
