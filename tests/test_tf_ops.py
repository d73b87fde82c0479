"""TensorFlow kernels of the layers: native grouped convolution and fused batch normalization."""

import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from child_process import run_child, run_jax_child
from tensorflow.python.util import _pywrap_util_port

from resnext_tf import build_resnext, tf_ops
from resnext_tf.backend_ops import resolve_conv_impl
from resnext_tf.layers import BatchNorm, GroupedConv2D

RNG = np.random.default_rng(0)
TINY = dict(depth=11, stem="cifar", cardinality=4, base_width=4, input_shape=(8, 8, 3))
XLA = "_XlaMustCompile"
BN_STATS = ("moving_mean", "moving_variance")


# ----------------------------------------------------------------------------------------------
# Grouped convolution


def numpy_grouped_conv(x, kernel, stride, pad, groups, upstream):
    """Reference output and gradients (of sum(output * upstream)) of a grouped convolution."""
    x = np.pad(x.astype(np.float64), [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    kh, kw, cin_g, cout = kernel.shape
    n, hp, wp, _ = x.shape
    oh, ow = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    k = kernel.astype(np.float64).reshape(kh, kw, cin_g, groups, cout // groups)
    up = upstream.astype(np.float64).reshape(n, oh, ow, groups, cout // groups)
    y = np.zeros_like(up)
    dx = np.zeros_like(x).reshape(n, hp, wp, groups, cin_g)
    dk = np.zeros_like(k)
    for i in range(kh):
        for j in range(kw):
            rows, cols = slice(i, i + stride * oh, stride), slice(j, j + stride * ow, stride)
            patch = x[:, rows, cols].reshape(n, oh, ow, groups, cin_g)
            y += np.einsum("nhwgc,cgo->nhwgo", patch, k[i, j])
            dx[:, rows, cols] += np.einsum("nhwgo,cgo->nhwgc", up, k[i, j])
            dk[i, j] = np.einsum("nhwgc,nhwgo->cgo", patch, up)
    dx = dx.reshape(n, hp, wp, -1)[:, pad : hp - pad, pad : wp - pad]
    return y.reshape(n, oh, ow, cout), dx, dk.reshape(kernel.shape)


def conv_outputs_and_gradients(conv, x, upstream, compile_fn):
    def fn(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = conv(x)
        return [y, *tape.gradient(y, [x, conv.kernel], output_gradients=upstream)]

    fn = tf.function(fn) if compile_fn else fn
    return [t.numpy() for t in fn(tf.constant(x))]


def traced_ops(fn, *specs):
    """Op types of a traced function, and whether any op or function must run under XLA."""
    graph = tf.function(fn).get_concrete_function(*specs).graph
    graph_def = graph.as_graph_def()
    xla = any(XLA in node.attr for node in graph_def.node) or any(
        XLA in function.attr for function in graph_def.library.function
    )
    return [op.type for op in graph.get_operations()], xla


@pytest.mark.parametrize("conv_impl", ["grouped", "split", "block_diagonal"])
@pytest.mark.parametrize("groups", [2, 4, 16])
@pytest.mark.parametrize("stride,size", [(1, 6), (2, 7)])
def test_grouped_conv_matches_numpy_forward_and_gradients(conv_impl, groups, stride, size):
    conv = GroupedConv2D(16, 3, strides=stride, groups=groups, padding=1, conv_impl=conv_impl)
    conv.build((None, size, size, 16))
    conv.kernel.assign(RNG.standard_normal(conv.kernel.shape).astype("float32"))
    x = RNG.standard_normal((2, size, size, 16)).astype("float32")
    out_size = (size - 1) // stride + 1
    upstream = RNG.standard_normal((2, out_size, out_size, 16)).astype("float32")
    expected = numpy_grouped_conv(x, conv.kernel.numpy(), stride, 1, groups, upstream)
    for compile_fn in (False, True):
        got = conv_outputs_and_gradients(conv, x, upstream, compile_fn)
        for name, a, b in zip(("output", "d_input", "d_kernel"), got, expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=name)


def test_grouped_runs_one_native_convolution_without_xla(monkeypatch):
    # As where TensorFlow has the grouped gradient (oneDNN or cuDNN), whatever this machine has.
    monkeypatch.setattr(
        tf_ops, "grouped_conv_supported", lambda dtype="float32", gradients=True: True
    )
    conv = GroupedConv2D(16, 3, strides=2, groups=8, padding=1, conv_impl="grouped")
    conv.build((None, 7, 7, 16))
    op_types, xla = traced_ops(conv, tf.TensorSpec((2, 7, 7, 16)))
    assert op_types.count("Conv2D") == 1 and "Split" not in op_types and not xla, op_types
    op_types, _ = traced_ops(
        GroupedConv2D(16, groups=8, conv_impl="split"), tf.TensorSpec((2, 7, 7, 16))
    )
    assert op_types.count("Conv2D") == 8 and "Split" in op_types


def test_probe_matches_this_build_and_runs_eagerly_inside_a_trace():
    # On this CPU-only machine TensorFlow has the grouped gradient exactly when oneDNN is on.
    assert not tf.config.list_physical_devices("GPU")
    onednn = _pywrap_util_port.IsMklEnabled()
    tf_ops._grouped_conv_supported.cache_clear()
    answers = []
    tf.function(lambda: answers.append(tf_ops.grouped_conv_supported("bfloat16")))()
    assert answers == [onednn]
    assert tf_ops.grouped_conv_supported() == onednn
    assert resolve_conv_impl("auto") == ("grouped" if onednn else "split")
    # Forward only, TensorFlow runs grouped convolutions with or without oneDNN.
    assert tf_ops.grouped_conv_supported(gradients=False)
    assert resolve_conv_impl("auto", inference=True) == "grouped"


@pytest.mark.parametrize("supported,expected", [(True, "grouped"), (False, "split")])
def test_auto_follows_the_probe(monkeypatch, supported, expected):
    monkeypatch.setattr(
        tf_ops, "grouped_conv_supported", lambda dtype="float32", gradients=True: supported
    )
    assert resolve_conv_impl("auto") == expected
    assert resolve_conv_impl("grouped") == "grouped" and resolve_conv_impl("split") == "split"
    op_types, _ = traced_ops(
        GroupedConv2D(16, groups=8, conv_impl="auto"), tf.TensorSpec((1, 4, 4, 16))
    )
    assert ("Split" in op_types) == (not supported)


def test_inference_layers_run_the_native_convolution_without_the_gradient(monkeypatch):
    # TensorFlow without oneDNN: the forward kernel runs groups, the gradient ops refuse them.
    monkeypatch.setattr(
        tf_ops, "grouped_conv_supported", lambda dtype="float32", gradients=True: not gradients
    )
    conv = GroupedConv2D(16, 3, groups=8, padding=1, conv_impl="auto")
    conv.inference_only = True
    conv.build((None, 7, 7, 16))
    op_types, xla = traced_ops(conv, tf.TensorSpec((2, 7, 7, 16)))
    assert op_types.count("Conv2D") == 1 and "Split" not in op_types and not xla, op_types
    trained = GroupedConv2D(16, 3, groups=8, padding=1, conv_impl="auto")
    op_types, _ = traced_ops(trained, tf.TensorSpec((2, 7, 7, 16)))
    assert op_types.count("Conv2D") == 8 and "Split" in op_types


def test_grouped_falls_back_to_keras_when_unsupported(monkeypatch):
    monkeypatch.setattr(
        tf_ops, "grouped_conv_supported", lambda dtype="float32", gradients=True: False
    )
    conv = GroupedConv2D(8, 3, strides=2, groups=4, padding=1, conv_impl="grouped")
    conv.build((None, 7, 7, 8))
    # Keras' grouped convolution: an XLA-compiled function, not a Conv2D op in this graph.
    op_types, xla = traced_ops(conv, tf.TensorSpec((2, 7, 7, 8)))
    assert xla and "Conv2D" not in op_types, op_types
    x = RNG.standard_normal((2, 7, 7, 8)).astype("float32")
    upstream = np.zeros((2, 4, 4, 8), "float32")
    expected = numpy_grouped_conv(x, conv.kernel.numpy(), 2, 1, 4, upstream)[0]
    np.testing.assert_allclose(conv(x).numpy(), expected, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# 1x1 convolutions as matrix products


@pytest.mark.parametrize("stride,size", [(1, 5), (2, 5), (2, 6)])
def test_pointwise_matmul_matches_numpy_forward_and_gradients(stride, size, monkeypatch):
    # A threshold of 0 sends every 1x1 convolution to the matrix product.
    monkeypatch.setattr(tf_ops, "POINTWISE_MATMUL_MIN_RATIO", 0.0)
    conv = GroupedConv2D(12, 1, strides=stride, padding=0)
    conv.build((None, size, size, 8))
    op_types, _ = traced_ops(conv, tf.TensorSpec((2, size, size, 8)))
    assert "MatMul" in op_types and "Conv2D" not in op_types, op_types
    x = RNG.standard_normal((2, size, size, 8)).astype("float32")
    out_size = (size - 1) // stride + 1
    upstream = RNG.standard_normal((2, out_size, out_size, 12)).astype("float32")
    expected = numpy_grouped_conv(x, conv.kernel.numpy(), stride, 0, 1, upstream)
    for compile_fn in (False, True):
        got = conv_outputs_and_gradients(conv, x, upstream, compile_fn)
        for name, a, b in zip(("output", "d_input", "d_kernel"), got, expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize(
    "shape,strides,filters,expected",
    [
        ((16, 7, 7, 2048), 1, 1024, True),  # resnext50 stage 4 at 224px: kernel 2.1M, act. 2.4M
        ((16, 14, 14, 1024), 2, 2048, True),  # its strided shortcut, 7x7 after the stride
        ((16, 14, 14, 1024), 1, 512, False),  # stage 3: kernel 0.5M, activations 4.8M
        ((16, 56, 56, 256), 1, 128, False),
        ((None, 14, 14, 1024), 1, 512, True),  # unknown batch counts as 1 (serving)
        ((16, None, None, 2048), 1, 1024, False),  # unknown spatial size keeps the convolution
    ],
)
def test_pointwise_as_matmul_where_the_kernel_outweighs_the_activations(
    shape, strides, filters, expected
):
    assert tf_ops.pointwise_as_matmul(shape, strides, filters) is expected


def test_pointwise_keeps_the_convolution_where_a_gpu_is_visible(monkeypatch):
    monkeypatch.setattr(tf_ops, "_gpu_visible", lambda: True)
    assert not tf_ops.pointwise_as_matmul((1, 7, 7, 2048), 1, 1024)


def test_model_runs_its_later_stages_as_matrix_products(monkeypatch):
    model = build_resnext(**TINY, num_classes=5)
    x = RNG.standard_normal((2, 8, 8, 3)).astype("float32")

    def trace_and_grads():
        def loss(x):
            return tf.reduce_sum(model(x, training=True) ** 2)

        op_types, _ = traced_ops(loss, tf.TensorSpec((2, 8, 8, 3)))

        @tf.function
        def grads(x):
            with tf.GradientTape() as tape:
                value = loss(x)
            return [value, *tape.gradient(value, model.trainable_variables)]

        return op_types, [g.numpy() for g in grads(tf.constant(x))]

    op_types, got = trace_and_grads()
    monkeypatch.setattr(tf_ops, "POINTWISE_MATMUL_MIN_RATIO", float("inf"))
    conv_op_types, expected = trace_and_grads()
    # Without the matrix products the only MatMul is the classifier's. Stage 1 (8x8, batch 2)
    # keeps its 1x1 convolutions; the later stages, whose kernels outweigh their activations,
    # run theirs as matrix products, with the same loss and gradients.
    assert conv_op_types.count("MatMul") == 1, conv_op_types
    assert op_types.count("MatMul") > 1 and "Conv2D" in op_types, op_types
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


WITHOUT_ONEDNN_CHILD = textwrap.dedent(
    """
    import numpy as np, keras, tensorflow as tf
    import resnext_tf
    from resnext_tf import tf_ops
    assert not tf_ops.grouped_conv_supported()
    assert tf_ops.grouped_conv_supported(gradients=False)
    assert resnext_tf.resolve_conv_impl("auto") == "split"
    model = resnext_tf.build_resnext(depth=11, stem="cifar", cardinality=4, base_width=4,
                                     input_shape=(8, 8, 3), num_classes=5, conv_impl="grouped")
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype("float32")

    @tf.function
    def grads(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True) ** 2)
        return tape.gradient(loss, model.trainable_variables)

    assert all(np.isfinite(g.numpy()).all() for g in grads(x))
    print("fallback ok")
    """
)


def test_without_onednn_grouped_trains_through_the_fallback():
    out = run_child(WITHOUT_ONEDNN_CHILD, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="3")
    assert "fallback ok" in out


# ----------------------------------------------------------------------------------------------
# Batch normalization


def bn_pair(dtype="float32", **kwargs):
    """(BatchNorm, stock Keras layer) with the same random gamma, beta and moving statistics."""
    layers = [
        cls(epsilon=1e-5, momentum=0.9, dtype=dtype, **kwargs)
        for cls in (BatchNorm, keras.layers.BatchNormalization)
    ]
    values = [
        RNG.uniform(0.5, 1.5, 6),
        RNG.normal(0, 0.5, 6),
        RNG.normal(1, 0.5, 6),
        RNG.uniform(0.5, 2.0, 6),
    ]
    for layer in layers:
        layer.build((None, 3, 3, 6))
        for variable, value in zip(layer.weights, values, strict=True):
            variable.assign(value.astype("float32"))
    return layers


def bn_results(layer, x, upstream, training, jit_compile):
    """Outputs, gradients for input, gamma and beta, moving statistics after one call."""

    @tf.function(jit_compile=jit_compile)
    def fn(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
        grads = tape.gradient(y, [x, layer.gamma, layer.beta], output_gradients=upstream)
        return [y, *grads]

    results = [tf.cast(t, tf.float32).numpy() for t in fn(x)]
    return results + [getattr(layer, name).numpy() for name in BN_STATS]


BN_NAMES = ("output", "d_input", "d_gamma", "d_beta", *BN_STATS)


def assert_bn_match(fused, stock, dtype, training, jit_compile, atol):
    # 2 x 3 x 3 = 18 values a channel: the unbiased variance is 18/17 of Keras' biased one.
    x = tf.cast(
        RNG.normal(2.0, 3.0, (2, 3, 3, 6)), keras.mixed_precision.Policy(dtype).compute_dtype
    )
    upstream = tf.cast(RNG.standard_normal((2, 3, 3, 6)), x.dtype)
    got = bn_results(fused, x, upstream, training, jit_compile)
    expected = bn_results(stock, x, upstream, training, jit_compile)
    for name, a, b in zip(BN_NAMES, got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=atol, atol=atol, err_msg=name)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
def test_fused_batchnorm_matches_keras(training, jit_compile):
    fused, stock = bn_pair()
    for _ in range(2):  # the second step starts from the moving statistics the first left
        assert_bn_match(fused, stock, "float32", training, jit_compile, atol=1e-5)
    if not jit_compile:
        op_types, _ = traced_ops(lambda x: fused(x, training=training), tf.TensorSpec((2, 3, 3, 6)))
        assert "FusedBatchNormV3" in op_types and "Rsqrt" not in op_types, op_types


@pytest.mark.parametrize("dtype", ["mixed_bfloat16", "mixed_float16"])
def test_fused_batchnorm_mixed_precision(dtype):
    fused, stock = bn_pair(dtype)
    assert fused.gamma.dtype == "float32" and fused.moving_mean.dtype == "float32"
    x = tf.zeros((1, 3, 3, 6), fused.compute_dtype)
    assert fused(x).dtype == stock(x).dtype == fused.compute_dtype
    atol = {"mixed_bfloat16": 3e-2, "mixed_float16": 3e-3}[dtype]
    for training, jit_compile in ((True, False), (False, False), (True, True)):
        assert_bn_match(fused, stock, dtype, training, jit_compile, atol)


def test_frozen_batchnorm_uses_moving_statistics():
    fused, stock = bn_pair()
    before = [getattr(fused, name).numpy() for name in BN_STATS]
    fused.trainable = stock.trainable = False
    assert_bn_match(fused, stock, "float32", True, False, atol=1e-5)
    after = [getattr(fused, name).numpy() for name in BN_STATS]
    np.testing.assert_array_equal(after, before)
    # Trainable again, training mode normalizes with the batch statistics.
    fused.trainable = True
    x = RNG.normal(0.0, 1.0, (2, 3, 3, 6)).astype("float32")
    assert not np.allclose(fused(x, training=True), fused(x, training=False), atol=0.1)


@pytest.mark.parametrize(
    "kwargs,shape,mask",
    [
        (dict(synchronized=True), (2, 3, 3, 6), None),
        (dict(), (2, 6), None),
        (dict(), (2, 3, 3, 6), np.ones((2, 3, 3), bool)),
    ],
    ids=["synchronized", "rank2", "mask"],
)
def test_batchnorm_defers_to_keras(kwargs, shape, mask):
    layer = BatchNorm(**kwargs)
    layer.build(shape)
    op_types, _ = traced_ops(
        lambda x: layer(x, training=True, mask=mask), tf.TensorSpec(shape, tf.float32)
    )
    # Keras' normalization: rsqrt(variance + epsilon) and element-wise ops.
    assert "FusedBatchNormV3" not in op_types and "Rsqrt" in op_types, op_types


def test_models_build_batchnorm_everywhere_and_save(tmp_path):
    for bottleneck_type in ("resnext_C", "resnext_B"):
        model = build_resnext(num_classes=5, bottleneck_type=bottleneck_type, **TINY)
        norms = [
            layer
            for layer in model._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)
        ]
        assert len(norms) >= 7 and {type(layer) for layer in norms} == {BatchNorm}
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.get_layer("stem_bn")) is BatchNorm
    x = RNG.standard_normal((2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# No TensorFlow under other backends

NO_TENSORFLOW_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np, keras
    import resnext_tf
    assert keras.backend.backend() == "jax"
    model = resnext_tf.build_resnext(depth=11, stem="cifar", cardinality=4, base_width=4,
                                     input_shape=(8, 8, 3), num_classes=5)
    assert resnext_tf.resolve_conv_impl("auto") == "grouped"
    x = np.zeros((2, 8, 8, 3), "float32")
    model(x, training=True), model(x, training=False)
    model.compile(optimizer="sgd",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(x, np.array([0, 1]))
    loaded = sorted(name for name in sys.modules if name.split(".")[0] == "tensorflow")
    assert not loaded, loaded[:5]
    print("no tensorflow")
    """
)


def test_model_under_jax_never_imports_tensorflow():
    assert "no tensorflow" in run_jax_child(NO_TENSORFLOW_CHILD)
