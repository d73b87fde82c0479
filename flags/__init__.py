"""absl flags of run_cifar.py and run_imagenet.py, generated from TrainConfig's fields
(`resnext_tf.training.config.option`), and their conversion to a TrainConfig.

`{name}` in a help text shows the recipe's value for the entry point's datasets, which
TrainConfig fills in for fields left at None.
"""

import dataclasses
import string
import sys
import types
import typing

from absl import app
from absl import flags as absl_flags
from absl import logging as absl_logging

from resnext_tf import recipes
from resnext_tf.training.config import GROUPS, TrainConfig

# Arguments on which absl prints the help and exits with code 1.
HELP_ARGS = frozenset({"--help", "-help", "--helpshort", "-helpshort", "-h", "-?"})


def _module(group):
    """The module name the flags of `group` are registered under (--helpfull shows it too)."""
    return f"{group} flags"


def _recipe_help(text, datasets):
    """`text` with each `{name}` replaced by the recipe value, per dataset where they differ."""
    values = {}
    for _, name, _, _ in string.Formatter().parse(text):
        if name:
            by_dataset = {d: getattr(recipes.recipe(d), name) for d in datasets}
            same = len(set(by_dataset.values())) == 1
            values[name] = (
                f"{by_dataset[datasets[0]]}"
                if same
                else ", ".join(f"{v} on {d}" for d, v in by_dataset.items())
            )
    return text.format(**values)


def _flag(field, datasets):
    """The absl Flag of a TrainConfig field."""
    meta, name, default = field.metadata, field.name, field.default
    text = _recipe_help(meta["help"], datasets)
    kind = field.type
    if isinstance(kind, types.UnionType):  # X | None
        kind = next(t for t in typing.get_args(kind) if t is not type(None))
    kind = typing.get_origin(kind) or kind
    if name == "dataset":
        return absl_flags.EnumFlag(name, datasets[0], text, datasets)
    if kind is bool:
        return absl_flags.BooleanFlag(name, default, text)
    if kind is tuple:
        choices = f" ({', '.join(meta['choices'])})" if meta["choices"] else ""
        parser, serializer = absl_flags.ListParser(), absl_flags.CsvListSerializer(",")
        return absl_flags.Flag(parser, serializer, name, list(default), text + choices)
    if meta["choices"]:
        return absl_flags.EnumFlag(name, default, text, meta["choices"])
    parsers = {int: absl_flags.IntegerParser, float: absl_flags.FloatParser}
    if kind in parsers:
        # TrainConfig's upper bound is open; the flag lets it through so its error says so.
        parser = parsers[kind](meta["low"], meta["high"])
    else:
        parser = absl_flags.ArgumentParser()
    return absl_flags.Flag(parser, absl_flags.ArgumentSerializer(), name, default, text)


def define_flags(datasets, flag_values=absl_flags.FLAGS):
    """Defines a flag for every TrainConfig field.

    Args:
        datasets: datasets the entry point accepts; the first is the default.
        flag_values: absl FlagValues to define into (tests pass their own).
    """
    for field in dataclasses.fields(TrainConfig):
        flag = _flag(field, datasets)
        absl_flags.DEFINE_flag(flag, flag_values, module_name=_module(field.metadata["group"]))


def help_text(flag_values=absl_flags.FLAGS):
    """The flags, group by group, as --help lists them."""
    return "\n".join(flag_values.module_help(_module(group)) for group in GROUPS)


def parse_flags(argv):
    """`app.run`'s flags_parser: absl's, except that --help lists the flags by group."""
    if HELP_ARGS.intersection(argv[1:]):
        print(f"{sys.modules['__main__'].__doc__}\nflags:\n{help_text()}\n")
        print("Try --helpfull to get a list of all flags.")
        sys.exit(1)
    return app.parse_flags_with_usage(argv)


def config_from_flags(flag_values=absl_flags.FLAGS):
    """Builds the TrainConfig from parsed flags.

    Raises:
        app.UsageError: naming the bad value and the allowed ones.
    """
    if "verbosity" in flag_values and not flag_values["verbosity"].present:
        # TensorFlow logs every checkpoint write at INFO; keep the console to the run's lines.
        absl_logging.set_verbosity(absl_logging.WARNING)
    values = {f.name: flag_values[f.name].value for f in dataclasses.fields(TrainConfig)}
    try:
        return TrainConfig(**values)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
