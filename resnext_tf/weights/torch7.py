"""Original Torch7 models (.t7 of facebookresearch/ResNeXt and fb.resnet.torch) as state dicts.

The module tree of models/resnext.lua (stem conv and BN, one nn.Sequential of blocks per stage,
nn.Linear; docs/weights.md, "Torch7 models") is walked in order and its parameters renamed to
torchvision's, so one mapping (`resnext_tf.weights.state_dict`) places both. Every module with
parameters must be consumed exactly once; any other module raises, naming its position.
"""

import math

import numpy as np

from resnext_tf.errors import WeightsError, one_line
from resnext_tf.layers import BN_EPSILON
from resnext_tf.weights.t7file import MAX_DEPTH, T7FormatError, T7Object, read_t7_file

# Torch7 class names without their package (nn., cudnn., fbnn., cunn.).
CONVOLUTIONS = ("SpatialConvolution", "SpatialConvolutionMM")
BATCH_NORMS = ("SpatialBatchNormalization", "BatchNormalization")
LINEARS = ("Linear",)
SEQUENTIAL = "Sequential"
CONCAT_TABLE = "ConcatTable"
# Parameter-free modules of the original models (type A shortcuts' subsample-and-pad included).
PARAMETER_FREE = (
    "ReLU",
    "SpatialMaxPooling",
    "SpatialAveragePooling",
    "View",
    "Reshape",
    "Identity",
    "MulConstant",
    "Concat",
    "JoinTable",
    "CAddTable",
    "Dropout",
)
# Containers that wrap a model when it was saved while training on several GPUs.
WRAPPERS = ("DataParallelTable",)
# Fields that hold a module's parameters in Torch7.
PARAMETER_FIELDS = ("weight", "bias", "running_mean", "running_var", "running_std")
RESIDUAL_LAYERS = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")
CONV_FIELDS = ("nOutputPlane", "nInputPlane", "kH", "kW")


def read_t7(path):
    """Reads a Torch7 ResNeXt/ResNet model file into a torchvision-style state dict.

    Args:
      path: A .t7 file written by Torch7's torch.save (binary format), holding the nn model.

    Returns:
      {torchvision tensor name (conv1.weight, layer1.0.bn1.running_var, ...): float32 array in
      Torch layout}.

    Raises:
      WeightsError: naming the file, when it is not a well-formed Torch7 file or its module tree
        is not a ResNeXt/ResNet of models/resnext.lua.
    """
    try:
        root, storage_values = read_t7_file(path)
    except T7FormatError as e:
        raise WeightsError(f"{path} is not a readable Torch7 file: {e}.") from e
    except OSError as e:
        raise WeightsError(f"Cannot read {path}: {one_line(e)}") from e
    try:
        return t7_state_dict(root, max_values=storage_values)
    except RecursionError as e:
        raise WeightsError(f"{path}: the module tree refers to itself.") from e
    except (ValueError, TypeError) as e:
        raise WeightsError(f"{path}: {one_line(e)}") from e


def t7_state_dict(root, max_values=None):
    """`read_t7`'s state dict of a module tree read from a .t7 file.

    Args:
      root: The model object of the file (see `resnext_tf.weights.t7file.read_t7_file`).
      max_values: The most values the parameters may hold together (the file's storages);
        more means shared tensors, which would let a small file expand into large copies.

    Raises:
      ValueError: when the module tree is not a ResNeXt/ResNet of models/resnext.lua.
    """
    return _Walker(max_values).walk(root)


def class_name(module):
    """The Torch7 class of `module` without its package, e.g. "SpatialConvolution"."""
    if not isinstance(module, T7Object):
        return type(module).__name__
    return str(module.torch_typename()).rpartition(".")[2]


def _children(module):
    children = module.modules if isinstance(module, T7Object) else None
    if children is None:
        return []
    if not isinstance(children, list):
        raise ValueError(f"The modules of a {class_name(module)} are not a list.")
    return children


def _array(module, field):
    """The non-empty array in a module's field, or None; not copied."""
    value = module[field] if isinstance(module, T7Object) else None
    if not isinstance(value, np.ndarray) or value.size == 0:
        return None
    return value


def _has_parameters(module):
    return any(_array(module, field) is not None for field in PARAMETER_FIELDS)


def _whole(module, field, path, minimum):
    value = module[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"The {class_name(module)} at {path} has {field}={value!r}.")
    return value


class _Walker:
    """One walk over a module tree; remembers which parameter modules it consumed."""

    def __init__(self, max_values=None):
        self.state = {}
        self.consumed = set()
        self.max_values = max_values
        self.values = 0

    def walk(self, root):
        for _ in range(MAX_DEPTH):
            if class_name(root) not in WRAPPERS or len(_children(root)) != 1:
                break
            root = _children(root)[0]
        top = self._expect(root, "model", (SEQUENTIAL,))
        kinds = [(path, m, self._kind(m, path)) for path, m in self._indexed(top, "model")]
        kinds = [(path, m, kind) for path, m, kind in kinds if kind != "free"]
        pattern = [kind for _, _, kind in kinds]
        stages = pattern[2:-1]
        if (
            pattern[:2] != ["conv", "bn"]
            or pattern[-1:] != ["linear"]
            or not stages
            or any(kind != "sequential" for kind in stages)
        ):
            raise ValueError(
                "Expected the top-level modules of a ResNeXt: convolution, batch norm, one "
                f"nn.Sequential per stage, nn.Linear; received {pattern}."
            )
        self._conv(kinds[0][1], kinds[0][0], "conv1")
        self._bn(kinds[1][1], kinds[1][0], "bn1")
        for s, (path, stage, _) in enumerate(kinds[2:-1], 1):
            for b, (block_path, block) in enumerate(self._indexed(stage, path)):
                self._block(block, block_path, f"layer{s}.{b}")
        self._linear(kinds[-1][1], kinds[-1][0], "fc")
        self._check_all_consumed(top, "model")
        return self.state

    @staticmethod
    def _indexed(module, path):
        # 1-based, as Torch's module:get(i).
        return [(f"{path}.{i}", child) for i, child in enumerate(_children(module), 1)]

    @staticmethod
    def _kind(module, path):
        name = class_name(module)
        for kind, names in (
            ("conv", CONVOLUTIONS),
            ("bn", BATCH_NORMS),
            ("linear", LINEARS),
            ("sequential", (SEQUENTIAL,)),
            ("concat_table", (CONCAT_TABLE,)),
            ("free", PARAMETER_FREE),
        ):
            if name in names:
                return kind
        raise ValueError(f"Unexpected Torch7 module {name} at {path}.")

    @staticmethod
    def _expect(module, path, names):
        if class_name(module) not in names:
            raise ValueError(f"Expected one of {names} at {path}; received {class_name(module)}.")
        return module

    def _block(self, block, path, prefix):
        self._expect(block, path, (SEQUENTIAL,))
        tables = [(p, m) for p, m in self._indexed(block, path) if self._kind(m, p) != "free"]
        if len(tables) != 1 or class_name(tables[0][1]) != CONCAT_TABLE:
            raise ValueError(
                f"Expected a residual block nn.Sequential [nn.ConcatTable, nn.CAddTable, ReLU] "
                f"at {path}; received {[class_name(m) for m in _children(block)]}."
            )
        table_path, table = tables[0]
        branches = self._indexed(table, table_path)
        if len(branches) != 2:
            raise ValueError(
                f"Expected [residual, shortcut] in the nn.ConcatTable at {table_path}; received "
                f"{len(branches)} branches."
            )
        (residual_path, residual), (shortcut_path, shortcut) = branches
        self._residual(residual, residual_path, prefix)
        self._shortcut(shortcut, shortcut_path, prefix)

    def _parameter_layers(self, sequential, path):
        """The conv/BN modules of an nn.Sequential, in order, as [[(path, module)], ...]."""
        self._expect(sequential, path, (SEQUENTIAL,))
        layers = []
        for child_path, child in self._indexed(sequential, path):
            kind = self._kind(child, child_path)
            if kind in ("conv", "bn"):
                layers.append([(child_path, child)])
            elif kind == "concat_table":
                # Form B: the branches joined are the grouped convolution, weights stacked.
                per_branch = [
                    self._parameter_layers(branch, branch_path)
                    for branch_path, branch in self._indexed(child, child_path)
                ]
                if len({len(b) for b in per_branch}) != 1:
                    raise ValueError(f"The branches at {child_path} differ in structure.")
                layers.extend(
                    [entry[0] for entry in group] for group in zip(*per_branch, strict=True)
                )
            elif kind != "free":
                raise ValueError(f"Unexpected {class_name(child)} at {child_path}.")
        return layers

    def _residual(self, residual, path, prefix):
        layers = self._parameter_layers(residual, path)
        kinds = [self._kind(group[0][1], group[0][0]) for group in layers]
        if kinds != ["conv", "bn"] * 3:
            raise ValueError(
                f"Expected the bottleneck conv, BN, conv, BN, conv, BN at {path}; received {kinds}."
            )
        for name, group in zip(RESIDUAL_LAYERS, layers, strict=True):
            convert = self._conv if name.startswith("conv") else self._bn
            parts = [convert(module, module_path) for module_path, module in group]
            for suffix in parts[0]:
                self.state[f"{prefix}.{name}.{suffix}"] = np.concatenate(
                    [part[suffix] for part in parts], axis=0
                )

    def _shortcut(self, shortcut, path, prefix):
        kind = self._kind(shortcut, path)
        if kind == "free":
            return  # identity, or type A's subsample with zero channels appended
        layers = [group[0] for group in self._parameter_layers(shortcut, path)]
        kinds = [self._kind(module, module_path) for module_path, module in layers]
        if kinds == []:
            return
        if kinds != ["conv", "bn"]:
            raise ValueError(
                f"Expected a projection shortcut [conv, BN] at {path}; received {kinds}."
            )
        (conv_path, conv), (bn_path, bn) = layers
        self._conv(conv, conv_path, f"{prefix}.downsample.0")
        self._bn(bn, bn_path, f"{prefix}.downsample.1")

    def _take(self, module, path, name=None, parts=None):
        if id(module) in self.consumed:
            raise ValueError(f"The module at {path} is used twice.")
        self.consumed.add(id(module))
        if name is not None:
            self.state.update({f"{name}.{k}": v for k, v in parts.items()})
        return parts

    def _conv(self, module, path, name=None):
        out, inp, kh, kw = (_whole(module, field, path, 1) for field in CONV_FIELDS)
        groups = 1 if module.groups is None else _whole(module, "groups", path, 1)
        shape = (out, inp // groups, kh, kw)
        weight = self._param(module, "weight", path)
        if weight is None or weight.size != math.prod(shape):
            size = None if weight is None else weight.size
            raise ValueError(
                f"The convolution at {path} has a weight of {size} values; expected {shape}."
            )
        bias = self._param(module, "bias", path)
        if bias is not None and np.any(bias):
            raise ValueError(
                f"The convolution at {path} has a non-zero bias; resnext_tf convolutions are "
                "bias-free (ResNeXt removes conv biases)."
            )
        return self._take(module, path, name, {"weight": weight.reshape(shape)})

    def _bn(self, module, path, name=None):
        weight, bias, mean, var = (
            self._param(module, f, path) for f in ("weight", "bias", "running_mean", "running_var")
        )
        eps = module.eps if module.eps is not None else BN_EPSILON
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 <= eps < 1:
            raise ValueError(f"The batch norm at {path} has eps={eps!r}.")
        if var is None:
            # nn before mid-2016 stored the running 1 / sqrt(var + eps).
            std = self._param(module, "running_std", path)
            var = None if std is None else 1.0 / np.square(std) - eps
        if any(t is None for t in (weight, bias, mean, var)):
            raise ValueError(
                f"The batch norm at {path} lacks affine parameters or running statistics."
            )
        # Keep the normaliser sqrt(var + eps) exact under resnext_tf's epsilon.
        var = var + np.float32(eps - BN_EPSILON)
        parts = {"weight": weight, "bias": bias, "running_mean": mean, "running_var": var}
        return self._take(module, path, name, parts)

    def _linear(self, module, path, name):
        weight, bias = self._param(module, "weight", path), self._param(module, "bias", path)
        if weight is None or bias is None:
            raise ValueError(f"The nn.Linear at {path} lacks its weight or bias.")
        self._take(module, path, name, {"weight": weight, "bias": bias})

    def _check_all_consumed(self, module, path, seen=None):
        seen = set() if seen is None else seen
        if id(module) in seen:
            return
        seen.add(id(module))
        if _has_parameters(module) and id(module) not in self.consumed:
            raise ValueError(
                f"The {class_name(module)} at {path} holds parameters that the ResNeXt "
                "structure does not use."
            )
        for child_path, child in self._indexed(module, path):
            self._check_all_consumed(child, child_path, seen)

    def _param(self, module, field, path):
        """A copy of a parameter as float32, or None; counts its values against the bound."""
        value = _array(module, field)
        if value is None:
            return None
        self.values += value.size
        if self.max_values is not None and self.values > self.max_values:
            raise ValueError(
                f"The parameters up to the {class_name(module)} at {path} hold {self.values} "
                f"values, more than the file's storages ({self.max_values}): modules share "
                "tensors."
            )
        return np.array(value, dtype=np.float32)
