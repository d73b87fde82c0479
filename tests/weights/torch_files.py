"""Test helpers: torchvision-named random state dicts and a writer of Torch7 .t7 files.

Written from the formats' definitions, independently of resnext_tf.weights:
* torchvision ResNet naming: conv1/bn1, layer{s}.{b}.conv1..bn3, layer{s}.{b}.downsample.0/1
  where the block's input and output widths differ, fc.
* Torch7 serialization (torch7 File.lua / generic/Tensor.c): int32 type tags, doubles for
  numbers, int32-length strings, tables and torch objects with a reference index, a
  "V <version>" string and the class name; tensors as ndim, int64 sizes, int64 strides, a 1-based
  int64 storage offset and the storage (int64 size and the raw values).
* The module tree of facebookresearch/ResNeXt models/resnext.lua (CIFAR stem).
"""

import struct

import numpy as np

NIL, NUMBER, STRING, TABLE, TORCH, BOOLEAN = 0, 1, 2, 3, 4, 5
BN_EPS = 1e-5


def random_state_dict(
    rng, planes, blocks, cardinality, base_width, stem_kernel, num_classes, counters=False
):
    """A torchvision-named ResNeXt state dict with random weights and BN statistics."""
    state = {}

    def conv(name, out, inp, k):
        state[f"{name}.weight"] = rng.normal(0, np.sqrt(2 / (k * k * out)), (out, inp, k, k))

    def bn(name, c):
        state[f"{name}.weight"] = rng.uniform(0.5, 1.5, c)
        state[f"{name}.bias"] = rng.uniform(-0.2, 0.2, c)
        state[f"{name}.running_mean"] = rng.uniform(-0.2, 0.2, c)
        state[f"{name}.running_var"] = rng.uniform(0.5, 2.0, c)
        if counters:
            state[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

    conv("conv1", 64, 3, stem_kernel)
    bn("bn1", 64)
    inplanes = 64
    for s, (p, n) in enumerate(zip(planes, blocks, strict=True), 1):
        width = p * base_width // 64 * cardinality
        for b in range(n):
            prefix = f"layer{s}.{b}"
            conv(f"{prefix}.conv1", width, inplanes, 1)
            bn(f"{prefix}.bn1", width)
            conv(f"{prefix}.conv2", width, width // cardinality, 3)
            bn(f"{prefix}.bn2", width)
            conv(f"{prefix}.conv3", 4 * p, width, 1)
            bn(f"{prefix}.bn3", 4 * p)
            if inplanes != 4 * p:
                conv(f"{prefix}.downsample.0", 4 * p, inplanes, 1)
                bn(f"{prefix}.downsample.1", 4 * p)
            inplanes = 4 * p
    state["fc.weight"] = rng.uniform(-0.1, 0.1, (num_classes, inplanes))
    state["fc.bias"] = rng.uniform(-0.1, 0.1, num_classes)
    return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in state.items()}


class Obj:
    """A Torch7 class instance: its type name and its fields table."""

    def __init__(self, typename, **fields):
        self.typename = typename
        self.fields = fields


class RawTensor:
    """A FloatTensor written with the given header, whatever it declares (crafted files).

    `storage_size` is the size the storage declares (by default the number of values).
    """

    def __init__(self, values, sizes, strides, offset=1, storage_size=None):
        self.values = np.asarray(values, np.float32).ravel()
        self.sizes, self.strides, self.offset = sizes, strides, offset
        self.storage_size = len(self.values) if storage_size is None else storage_size


class T7Writer:
    """Writes Lua values, Torch7 objects and FloatTensors in Torch7's binary format.

    With `share`, an Obj or array met again is written as a reference to the first, as Torch
    does for shared objects. With `flat`, every array is a view of one FloatStorage holding
    them all one after the other, as after Torch7's `model:getParameters()`.
    """

    def __init__(self, f, share=False, flat=False):
        self.f = f
        self.index = 0
        self.share = share
        self.memo = {}
        self.flat = None
        self.offsets = {}
        self.flat_written = None
        if flat:
            self.flat = []

    def prepare(self, obj):
        """Collects the arrays of `obj` for the flat storage (call before `write`)."""
        if self.flat is None:
            return
        if isinstance(obj, np.ndarray):
            if id(obj) not in self.offsets:
                self.offsets[id(obj)] = sum(a.size for a in self.flat)
                self.flat.append(np.ascontiguousarray(obj, np.float32))
        elif isinstance(obj, Obj):
            self.prepare(obj.fields)
        elif isinstance(obj, list):
            for value in obj:
                self.prepare(value)
        elif isinstance(obj, dict):
            for value in obj.values():
                self.prepare(value)

    def _shared(self, obj):
        """Writes a reference when `obj` was written before (with `share`); True if so."""
        if not self.share:
            return False
        if id(obj) in self.memo:
            self._int(TORCH)
            self._int(self.memo[id(obj)])
            return True
        self.memo[id(obj)] = self.index + 1
        return False

    def _int(self, v):
        self.f.write(struct.pack("<i", v))

    def _long(self, v):
        self.f.write(struct.pack("<q", v))

    def _string(self, s):
        data = s.encode()
        self._int(len(data))
        self.f.write(data)

    def _header(self, typename):
        self.index += 1
        self._int(TORCH)
        self._int(self.index)
        self._string("V 1")
        self._string(typename)

    def write(self, obj):
        if obj is None:
            self._int(NIL)
        elif isinstance(obj, bool):
            self._int(BOOLEAN)
            self._int(int(obj))
        elif isinstance(obj, int | float):
            self._int(NUMBER)
            self.f.write(struct.pack("<d", float(obj)))
        elif isinstance(obj, str):
            self._int(STRING)
            self._string(obj)
        elif isinstance(obj, RawTensor):
            self._raw_tensor(obj)
        elif isinstance(obj, np.ndarray):
            if not self._shared(obj):
                self._tensor(obj)
        elif isinstance(obj, Obj):
            if not self._shared(obj):
                self._header(obj.typename)
                self.write(obj.fields)
        elif isinstance(obj, list):
            self.write({i: v for i, v in enumerate(obj, 1)})
        elif isinstance(obj, dict):
            self.index += 1
            self._int(TABLE)
            self._int(self.index)
            self._int(len(obj))
            for key, value in obj.items():
                self.write(key)
                self.write(value)
        else:
            raise TypeError(type(obj))

    def _tensor(self, array):
        offset = self.offsets.get(id(array), 0)
        array = np.ascontiguousarray(array, np.float32)
        self._header("torch.FloatTensor")
        self._int(array.ndim)
        for size in array.shape:
            self._long(size)
        for stride in array.strides:
            self._long(stride // array.itemsize)
        self._long(offset + 1)  # storage offset, 1-based
        if self.flat is None:
            self._storage(array.size, array)
        elif self.flat_written is not None:
            self._int(TORCH)  # a reference to the one storage
            self._int(self.flat_written)
        else:
            self.flat_written = self.index + 1
            values = np.concatenate([a.ravel() for a in self.flat])
            self._storage(values.size, values)

    def _storage(self, size, values):
        self._header("torch.FloatStorage")
        self._long(size)
        self.f.write(np.asarray(values, np.float32).tobytes())

    def _raw_tensor(self, tensor):
        self._header("torch.FloatTensor")
        self._int(len(tensor.sizes))
        for size in tensor.sizes:
            self._long(size)
        for stride in tensor.strides:
            self._long(stride)
        self._long(tensor.offset)
        self._storage(tensor.storage_size, tensor.values)


def write_t7(path, obj, share=False, flat=False):
    with open(path, "wb") as f:
        writer = T7Writer(f, share=share, flat=flat)
        writer.prepare(obj)
        writer.write(obj)


def seq(*modules):
    return Obj("nn.Sequential", modules=list(modules), train=False)


def conv(weight, stride=1, groups=1):
    out, in_per_group, kh, kw = weight.shape
    pad = kh // 2
    return Obj(
        "cudnn.SpatialConvolution",
        weight=weight,
        nInputPlane=in_per_group * groups,
        nOutputPlane=out,
        kW=kw,
        kH=kh,
        dW=stride,
        dH=stride,
        padW=pad,
        padH=pad,
        groups=groups,
    )


def bn(state, name, eps=BN_EPS):
    return Obj(
        "nn.SpatialBatchNormalization",
        weight=state[f"{name}.weight"],
        bias=state[f"{name}.bias"],
        running_mean=state[f"{name}.running_mean"],
        running_var=state[f"{name}.running_var"],
        eps=eps,
        momentum=0.1,
        affine=True,
    )


def relu():
    return Obj("cudnn.ReLU", inplace=True)


def _branches(state, prefix, cardinality, stride):
    """resnext_B: the grouped layers of form C split into `cardinality` parallel branches."""
    width = state[f"{prefix}.conv1.weight"].shape[0]
    d = width // cardinality
    branches = []
    for i in range(cardinality):
        part = slice(i * d, (i + 1) * d)
        sliced = {
            f"{layer}.{field}": state[f"{prefix}.{layer}.{field}"][part]
            for layer in ("bn1", "bn2")
            for field in ("weight", "bias", "running_mean", "running_var")
        }
        branches.append(
            seq(
                conv(state[f"{prefix}.conv1.weight"][part]),
                bn(sliced, "bn1"),
                relu(),
                conv(state[f"{prefix}.conv2.weight"][part], stride),
                bn(sliced, "bn2"),
                relu(),
            )
        )
    return [Obj("nn.ConcatTable", modules=branches), Obj("nn.JoinTable", dimension=2)]


def block(state, prefix, cardinality, stride, form):
    if form == "B":
        head = _branches(state, prefix, cardinality, stride)
    else:
        head = [
            conv(state[f"{prefix}.conv1.weight"]),
            bn(state, f"{prefix}.bn1"),
            relu(),
            conv(state[f"{prefix}.conv2.weight"], stride, cardinality),
            bn(state, f"{prefix}.bn2"),
            relu(),
        ]
    residual = seq(*head, conv(state[f"{prefix}.conv3.weight"]), bn(state, f"{prefix}.bn3"))
    if f"{prefix}.downsample.0.weight" in state:
        shortcut = seq(
            conv(state[f"{prefix}.downsample.0.weight"], stride),
            bn(state, f"{prefix}.downsample.1"),
        )
    else:
        shortcut = Obj("nn.Identity")
    return seq(
        Obj("nn.ConcatTable", modules=[residual, shortcut]),
        Obj("nn.CAddTable", inplace=True),
        relu(),
    )


def cifar_model(state, blocks, cardinality, form="C"):
    """The nn module tree of models/resnext.lua for the CIFAR stem."""
    stages = []
    for s, n in enumerate(blocks, 1):
        stride = 1 if s == 1 else 2
        stages.append(
            seq(
                *[
                    block(state, f"layer{s}.{b}", cardinality, stride if b == 0 else 1, form)
                    for b in range(n)
                ]
            )
        )
    features = state["fc.weight"].shape[1]
    return seq(
        conv(state["conv1.weight"]),
        bn(state, "bn1"),
        relu(),
        *stages,
        Obj("cudnn.SpatialAveragePooling", kW=8, kH=8, dW=1, dH=1),
        Obj("nn.View", size=[features], numInputDims=3),
        Obj("nn.Linear", weight=state["fc.weight"], bias=state["fc.bias"]),
    )
