"""Original Torch7 models (.t7 of facebookresearch/ResNeXt and fb.resnet.torch) as state dicts.

The module tree of models/resnext.lua is walked in order and its parameters are renamed to
torchvision's names, so one mapping (`resnext_tf.weights.state_dict`) places both:

    nn.Sequential
      conv (stem), BN, ReLU, [max pool]                  -> conv1, bn1
      nn.Sequential per stage, of blocks:                -> layer{s}.{b}
        nn.Sequential [nn.ConcatTable [residual, shortcut], nn.CAddTable, ReLU]
          residual resnext_C / resnet: conv, BN, ReLU, conv (groups C), BN, ReLU, conv, BN
          residual resnext_B: nn.ConcatTable of C branches [conv, BN, ReLU, conv, BN, ReLU],
            nn.JoinTable, conv, BN (the branches are stacked into the grouped form C)
          shortcut: nn.Sequential [conv, BN] (-> downsample.0/1), nn.Identity, or type A's
            parameter-free subsample-and-pad
      average pool, nn.View, nn.Linear                   -> fc

Every module that holds parameters must be consumed exactly once; a module the walk does not
expect, or one it leaves unused, raises an error naming its position in the tree.
"""

import numpy as np

from resnext_tf.layers import BN_EPSILON

# Torch7 class names without their package (nn., cudnn., fbnn., cunn.).
CONVOLUTIONS = ("SpatialConvolution", "SpatialConvolutionMM")
BATCH_NORMS = ("SpatialBatchNormalization", "BatchNormalization")
LINEARS = ("Linear",)
SEQUENTIAL = "Sequential"
CONCAT_TABLE = "ConcatTable"
# Parameter-free modules of the original models (pooling, activations, reshapes, the
# shortcut's subsample-and-pad and the joins).
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


def read_t7(path):
    """Reads a Torch7 ResNeXt/ResNet model file into a torchvision-style state dict.

    Args:
      path: A .t7 file written by Torch7's torch.save (binary format), holding the nn model.

    Returns:
      A dict from torchvision tensor name (conv1.weight, layer1.0.bn1.running_var, fc.bias,
      ...) to float32 arrays in Torch layout.

    Raises:
      ImportError: without the torchfile package.
      ValueError: when the module tree is not a ResNeXt/ResNet of models/resnext.lua.
    """
    try:
        import torchfile
    except ImportError as e:
        raise ImportError(
            f"Reading {path} needs the torchfile package: pip install torchfile"
        ) from e
    return t7_state_dict(torchfile.load(str(path)))


def t7_state_dict(root):
    """Converts a module tree read by torchfile into a torchvision-style state dict.

    Args:
      root: The model object returned by `torchfile.load`.

    Returns:
      See `read_t7`.
    """
    return _Walker().walk(root)


def class_name(module):
    """The Torch7 class of `module` without its package, e.g. "SpatialConvolution"."""
    typename = getattr(module, "torch_typename", None)
    if typename is None:
        return type(module).__name__
    name = typename()
    name = name.decode() if isinstance(name, bytes) else name
    return name.rpartition(".")[2]


def _children(module):
    return list(module.modules or [])


def _has_parameters(module):
    return any(_tensor(module, field) is not None for field in PARAMETER_FIELDS)


def _tensor(module, field):
    value = module[field]
    if value is None or not isinstance(value, np.ndarray) or value.size == 0:
        return None
    return np.array(value, dtype=np.float32)


class _Walker:
    """One walk over a module tree; remembers which parameter modules it consumed."""

    def __init__(self):
        self.state = {}
        self.consumed = set()

    def walk(self, root):
        while class_name(root) in WRAPPERS and len(_children(root)) == 1:
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
                # Form B: parallel branches; the nn.JoinTable after them concatenates their
                # channels, which is the grouped convolution with the branches' weights stacked.
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
        groups = module.groups or 1
        shape = (module.nOutputPlane, module.nInputPlane // groups, module.kH, module.kW)
        weight = _tensor(module, "weight")
        if weight is None or weight.size != np.prod(shape):
            size = None if weight is None else weight.size
            raise ValueError(
                f"The convolution at {path} has a weight of {size} values; expected {shape}."
            )
        bias = _tensor(module, "bias")
        if bias is not None and np.any(bias):
            raise ValueError(
                f"The convolution at {path} has a non-zero bias; resnext_tf convolutions are "
                "bias-free (ResNeXt removes conv biases)."
            )
        return self._take(module, path, name, {"weight": weight.reshape(shape)})

    def _bn(self, module, path, name=None):
        weight, bias, mean = (_tensor(module, f) for f in ("weight", "bias", "running_mean"))
        eps = module.eps if module.eps is not None else BN_EPSILON
        var = _tensor(module, "running_var")
        if var is None and _tensor(module, "running_std") is not None:
            # nn before mid-2016 stored the running 1 / sqrt(var + eps).
            var = 1.0 / np.square(_tensor(module, "running_std")) - eps
        if any(t is None for t in (weight, bias, mean, var)):
            raise ValueError(
                f"The batch norm at {path} lacks affine parameters or running statistics."
            )
        # Keep the normaliser sqrt(var + eps) exact under resnext_tf's epsilon.
        var = var + np.float32(eps - BN_EPSILON)
        parts = {"weight": weight, "bias": bias, "running_mean": mean, "running_var": var}
        return self._take(module, path, name, parts)

    def _linear(self, module, path, name):
        weight, bias = _tensor(module, "weight"), _tensor(module, "bias")
        if weight is None or bias is None:
            raise ValueError(f"The nn.Linear at {path} lacks its weight or bias.")
        self._take(module, path, name, {"weight": weight, "bias": bias})

    def _check_all_consumed(self, module, path):
        if _has_parameters(module) and id(module) not in self.consumed:
            raise ValueError(
                f"The {class_name(module)} at {path} holds parameters that the ResNeXt "
                "structure does not use."
            )
        for child_path, child in self._indexed(module, path):
            self._check_all_consumed(child, child_path)
