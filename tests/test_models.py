"""Tests of the model library: counts, shapes, gradients, conv implementations, serialization."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from child_process import run_jax_child

import resnext_tf
from resnext_tf import Bottleneck, GroupedConv2D, build_resnext, create_model, list_models

# Trainable parameter counts, exact (docs/reference.md, "Parameter
# counts and multiply-adds"; torchvision publishes the ImageNet ones).
PARAM_COUNTS = {
    ("resnext29_8x64d", 10): 34_426_698,
    ("resnext29_16x64d", 10): 68_155_210,
    ("resnext29_16x64d", 100): 68_247_460,
    ("resnext50_32x4d", 1000): 25_028_904,
    ("resnext101_32x4d", 1000): 44_177_704,
    ("resnext101_32x8d", 1000): 88_791_336,
    ("resnext101_64x4d", 1000): 83_455_272,
    ("resnext152_32x4d", 1000): 59_951_400,
    ("resnet50", 1000): 25_557_032,
    ("resnet101", 1000): 44_549_160,
}
# Multiply-adds at the native input size, in GMac, as the paper reports (docs/reference.md).
FLOPS_G = {
    "resnext50_32x4d": 4.23,
    "resnet50": 4.09,
    "resnext101_32x4d": 7.97,
    "resnext101_64x4d": 15.46,
    "resnext29_8x64d": 5.39,
    "resnext29_16x64d": 10.69,
}
TINY = dict(depth=11, stem="cifar", cardinality=4, base_width=4, input_shape=(8, 8, 3))
RNG = np.random.default_rng(0)


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def images(n, size):
    return RNG.standard_normal((n, size, size, 3)).astype("float32")


def randomize(model, seed=1):
    """Random weights and BN statistics, so equality checks are not fooled by the init."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if "moving_variance" in v.path or "gamma" in v.path:
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
        else:
            v.assign(rng.normal(0.0, 0.1, v.shape).astype("float32"))


@pytest.mark.parametrize("name,classes", sorted(PARAM_COUNTS), ids=lambda p: str(p))
def test_parameter_counts(name, classes):
    model = create_model(name, num_classes=classes)
    assert trainable_count(model) == PARAM_COUNTS[(name, classes)]


@pytest.mark.parametrize("name", sorted(FLOPS_G))
def test_multiply_adds_match_paper(name):
    assert resnext_tf.count_flops(name) / 1e9 == pytest.approx(FLOPS_G[name], abs=0.005)


def test_one_x_complexity_variants_keep_resnet50_budget():
    # The paper's Table 3 keeps ResNet-50's complexity: params within 1%, FLOPs within 5%.
    for name in ("resnext50_2x40d", "resnext50_4x24d", "resnext50_8x14d", "resnext50_32x4d"):
        model = create_model(name)
        assert trainable_count(model) == pytest.approx(25_557_032, rel=0.025)
        assert resnext_tf.count_flops(model) == pytest.approx(4.09e9, rel=0.05)


@pytest.mark.parametrize("name", list_models())
def test_registered_variant_forward(name):
    stem = resnext_tf.model_kwargs(name)["stem"]
    size = 32 if stem == "imagenet" else 8
    model = create_model(name, input_shape=(size, size, 3), num_classes=7)
    out = model(images(2, size), training=False)
    assert tuple(out.shape) == (2, 7)
    assert np.isfinite(keras.ops.convert_to_numpy(out)).all()


def test_list_models_names():
    required = {
        "resnext29_8x64d",
        "resnext29_16x64d",
        "resnext50_32x4d",
        "resnext101_32x4d",
        "resnext101_32x8d",
        "resnext101_64x4d",
        "resnext152_32x4d",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnext50_2x40d",
        "resnext50_4x24d",
        "resnext50_8x14d",
    }
    assert required <= set(list_models())


def test_layer_names_are_deterministic():
    model = create_model("resnext50_32x4d")
    names = [layer.name for layer in model.layers]
    assert names[1:3] == ["stem_conv", "stem_bn"]
    assert "stage2_block3" in names and "stage4_block3" in names and names[-1] == "head"
    block = model.get_layer("stage2_block1")
    assert block.conv2.name == "stage2_block1_conv2"
    assert tuple(block.conv2.kernel.shape) == (3, 3, 8, 256)
    assert block.shortcut_conv.name == "stage2_block1_shortcut_conv"


@pytest.mark.parametrize(
    "bottleneck_type,shortcut_type",
    [
        ("resnext_C", "B"),
        ("resnext_B", "B"),
        ("resnet", "B"),
        ("resnext_C", "A"),
        ("resnext_C", "C"),
    ],
)
def test_every_variable_gets_a_gradient(bottleneck_type, shortcut_type):
    kwargs = dict(TINY, bottleneck_type=bottleneck_type, shortcut_type=shortcut_type)
    if bottleneck_type == "resnet":
        kwargs.update(cardinality=1, base_width=64)
    model = build_resnext(num_classes=5, **kwargs)
    x, y = images(4, 8), np.array([0, 1, 2, 3])
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
    grads = tape.gradient(loss, model.trainable_variables)
    for var, grad in zip(model.trainable_variables, grads, strict=True):
        assert grad is not None, var.path
        assert float(tf.reduce_max(tf.abs(grad))) > 0, var.path


def numpy_conv(x, kernel, stride, pad, groups):
    """Reference grouped convolution with Torch's symmetric zero padding."""
    x = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    kh, kw, cin_g, cout = kernel.shape
    cout_g = cout // groups
    h = (x.shape[1] - kh) // stride + 1
    w = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], h, w, cout), np.float64)
    for g in range(groups):
        xg = x[..., g * cin_g : (g + 1) * cin_g]
        kg = kernel[..., g * cout_g : (g + 1) * cout_g]
        for i in range(h):
            for j in range(w):
                patch = xg[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
                out[:, i, j, g * cout_g : (g + 1) * cout_g] = np.tensordot(
                    patch, kg, axes=([1, 2, 3], [0, 1, 2])
                )
    return out


@pytest.mark.parametrize("conv_impl", ["grouped", "split"])
@pytest.mark.parametrize("stride,size", [(1, 6), (2, 7), (2, 8)])
def test_grouped_conv_matches_reference(conv_impl, stride, size):
    conv = GroupedConv2D(8, 3, strides=stride, groups=4, padding=1, conv_impl=conv_impl)
    x = images(2, size)[..., :1].repeat(8, axis=-1) * RNG.standard_normal(8).astype("float32")
    out = keras.ops.convert_to_numpy(conv(x))
    expected = numpy_conv(x, keras.ops.convert_to_numpy(conv.kernel), stride, 1, 4)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_grouped_and_split_models_agree():
    grouped = build_resnext(conv_impl="grouped", num_classes=5, **TINY)
    split = build_resnext(conv_impl="split", num_classes=5, **TINY)
    randomize(grouped)
    split.set_weights(grouped.get_weights())
    x = images(3, 8)
    for training in (False, True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(split(x, training=training)),
            keras.ops.convert_to_numpy(grouped(x, training=training)),
            rtol=1e-4,
            atol=1e-4,
        )


def c_to_b_weights(block_c, block_b):
    """Copies a resnext_C block's weights into the equivalent resnext_B block."""
    groups, d = block_c.cardinality, block_c.width // block_c.cardinality
    bn_vars = ("gamma", "beta", "moving_mean", "moving_variance")
    for i in range(groups):
        part = slice(i * d, (i + 1) * d)
        block_b.branch_conv1[i].kernel.assign(block_c.conv1.kernel[..., part])
        block_b.branch_conv2[i].kernel.assign(block_c.conv2.kernel[..., part])
        for bn_c, bn_b in (
            (block_c.bn1, block_b.branch_bn1[i]),
            (block_c.bn2, block_b.branch_bn2[i]),
        ):
            for var in bn_vars:
                getattr(bn_b, var).assign(getattr(bn_c, var)[part])
    others = ["conv3", "bn3"] + (["shortcut_conv", "shortcut_bn"] if block_c.has_projection else [])
    for attr in others:
        for src, dst in zip(
            getattr(block_c, attr).weights, getattr(block_b, attr).weights, strict=True
        ):
            dst.assign(src)


def test_resnext_b_equals_c_with_rearranged_weights():
    model_c = build_resnext(bottleneck_type="resnext_C", num_classes=5, **TINY)
    model_b = build_resnext(bottleneck_type="resnext_B", num_classes=5, **TINY)
    randomize(model_c)
    assert trainable_count(model_b) == trainable_count(model_c)
    for layer_c, layer_b in zip(model_c.layers, model_b.layers, strict=True):
        if isinstance(layer_c, Bottleneck):
            c_to_b_weights(layer_c, layer_b)
        else:
            for src, dst in zip(layer_c.weights, layer_b.weights, strict=True):
                dst.assign(src)
    x = images(3, 8)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model_b(x, training=False)),
        keras.ops.convert_to_numpy(model_c(x, training=False)),
        rtol=1e-4,
        atol=1e-4,
    )


def test_shortcut_a_is_zero_padded_strided_identity():
    # With zero_init_residual the residual branch outputs bn3's beta = 0, so the block computes
    # relu(shortcut(x)) exactly.
    block = Bottleneck(
        8, strides=2, cardinality=2, base_width=64, shortcut_type="A", zero_init_residual=True
    )
    x = np.abs(images(2, 6)[..., :1].repeat(16, axis=-1))
    out = keras.ops.convert_to_numpy(block(x, training=False))
    expected = np.concatenate([x[:, ::2, ::2, :], np.zeros((2, 3, 3, 16), "float32")], axis=-1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert not block.has_projection


@pytest.mark.parametrize("shortcut_type,projections", [("A", 0), ("B", 3), ("C", 6)])
def test_shortcut_projection_count(shortcut_type, projections):
    # Depth 20: two blocks a stage; B projects in the first block of each stage, C in all.
    model = build_resnext(shortcut_type=shortcut_type, **dict(TINY, depth=20))
    found = [layer for layer in model.layers if getattr(layer, "has_projection", False)]
    assert len(found) == projections


def test_initialization_matches_torch():
    model = create_model("resnext50_32x4d")
    conv = model.get_layer("stage3_block2").conv2.kernel
    # He fan_out: std = sqrt(2 / (3 * 3 * 512)).
    assert float(np.std(keras.ops.convert_to_numpy(conv))) == pytest.approx(
        np.sqrt(2 / (9 * 512)), rel=0.02
    )
    head = model.get_layer("head")
    kernel = keras.ops.convert_to_numpy(head.kernel)
    assert np.abs(kernel).max() <= 1 / np.sqrt(2048) and np.abs(kernel).max() > 0.9 / np.sqrt(2048)
    assert not keras.ops.convert_to_numpy(head.bias).any()
    bn = model.get_layer("stem_bn")
    assert bn.epsilon == 1e-5 and bn.momentum == 0.9
    zero = build_resnext(zero_init_residual=True, **TINY)
    assert not keras.ops.convert_to_numpy(zero.get_layer("stage1_block1").bn3.gamma).any()


def test_get_config_round_trip():
    model = build_resnext(bottleneck_type="resnext_B", shortcut_type="C", num_classes=3, **TINY)
    block = model.get_layer("stage2_block1")
    assert Bottleneck.from_config(block.get_config()).get_config() == block.get_config()
    clone = keras.Model.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert trainable_count(clone) == trainable_count(model)


SAVE_LOAD_CHILD = textwrap.dedent(
    """
    import sys, numpy as np, keras
    import resnext_tf  # registers the layers; no custom_objects needed
    model = keras.models.load_model(sys.argv[1])
    x = np.load(sys.argv[2])
    np.save(sys.argv[3], keras.ops.convert_to_numpy(model(x, training=False)))
    """
)


def test_keras_save_load_in_fresh_process(tmp_path):
    model = build_resnext(num_classes=4, **TINY)
    randomize(model)
    x = images(2, 8)
    path = tmp_path / "m.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    subprocess.run(
        [
            sys.executable,
            "-c",
            SAVE_LOAD_CHILD,
            str(path),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
        ],
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    np.testing.assert_allclose(
        np.load(tmp_path / "y.npy"), keras.ops.convert_to_numpy(model(x, training=False)), atol=1e-5
    )


JAX_CHILD = textwrap.dedent(
    """
    import numpy as np, keras
    assert keras.backend.backend() == "jax"
    import resnext_tf
    assert resnext_tf.resolve_conv_impl("auto") == "grouped"
    for impl in ("grouped", "split"):
        model = resnext_tf.build_resnext(depth=11, stem="cifar", cardinality=4, base_width=4,
                                         input_shape=(8, 8, 3), num_classes=5, conv_impl=impl)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x = np.random.default_rng(0).standard_normal((4, 8, 8, 3)).astype("float32")
        y = np.array([0, 1, 2, 3])
        before = [np.array(w) for w in model.trainable_weights]
        loss = float(model.train_on_batch(x, y))
        after = [np.array(w) for w in model.trainable_weights]
        assert np.isfinite(loss), loss
        assert all((a != b).any() for a, b in zip(after, before)), impl
        out = np.asarray(model.predict(x, verbose=0))
        assert out.shape == (4, 5) and np.isfinite(out).all()
    print("jax ok")
    """
)


def test_jax_backend_forward_and_train_step():
    assert "jax ok" in run_jax_child(JAX_CHILD)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(depth=34), r"depth=34.*\(50, 101, 152\)"),
        (dict(depth=30, stem="cifar"), r"depth=30.*9n \+ 2"),
        (dict(depth=50, stem="mnist"), r"stem='mnist'"),
        (dict(depth=50, base_width=0), r"base_width=0"),
        (dict(depth=50, cardinality=0), r"cardinality=0"),
        (dict(depth=50, bottleneck_type="resnext_D"), r"bottleneck_type='resnext_D'"),
        (dict(depth=50, shortcut_type="D"), r"shortcut_type='D'"),
        (dict(depth=50, conv_impl="fast"), r"conv_impl='fast'"),
        (dict(depth=50, input_shape=(16, 16, 3)), r"at least 32x32.*\(16, 16, 3\)"),
        (dict(depth=29, stem="cifar", input_shape=(4, 4, 3)), r"at least 8x8"),
        (dict(depth=50, input_shape=(64, 64, 0)), r"channels >= 1.*\(64, 64, 0\)"),
        (dict(depth=50, in_channels=0), r"in_channels=0"),
        (dict(depth=50, input_shape=(64, 64, 1), in_channels=3), r"1 channels.*in_channels=3"),
        (dict(depth=50, bottleneck_type="resnet", cardinality=32), r"cardinality=32"),
        (dict(depth=50, pooling="sum", include_top=False), r"pooling='sum'"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_resnext(**kwargs)


def test_grouped_conv_rejects_groups_not_dividing_channels():
    with pytest.raises(ValueError, match=r"groups=3, filters=8"):
        GroupedConv2D(8, groups=3)
    with pytest.raises(ValueError, match=r"groups=4, input channels=6"):
        GroupedConv2D(8, groups=4).build((None, 4, 4, 6))


def test_registry_overrides():
    model = create_model(
        "resnext29_8x64d",
        num_classes=100,
        input_shape=(16, 16, 3),
        bottleneck_type="resnext_B",
        conv_impl="split",
    )
    assert model.output.shape[-1] == 100
    create_model("resnext50_32x4d", cardinality=32)  # repeating the variant is fine
    with pytest.raises(ValueError, match=r"cardinality=32.*cardinality=16"):
        create_model("resnext50_32x4d", cardinality=16)
    with pytest.raises(ValueError, match=r"depth=50.*depth=101"):
        create_model("resnext50_32x4d", depth=101)
    with pytest.raises(ValueError, match=r"bottleneck_type='resnext_C'"):
        create_model("resnet50", bottleneck_type="resnext_C")
    with pytest.raises(ValueError, match=r"name='resnext51'"):
        create_model("resnext51")


def test_any_image_size_with_the_top():
    """As timm's and torchvision's: the head pools globally, so (None, None, 3) takes any size
    from the stem's minimum on, and the logits do not depend on the batch's other sizes."""
    model = create_model("resnext50_32x4d", input_shape=(None, None, 3))
    assert model.input_shape == (None, None, None, 3)
    rng = np.random.default_rng(0)
    for size in (64, 320, 33):
        images = rng.standard_normal((1, size, size, 3)).astype("float32")
        logits = model(images, training=False)
        assert logits.shape == (1, 1000) and np.all(np.isfinite(logits))
    fixed = create_model("resnext50_32x4d", input_shape=(64, 64, 3))
    fixed.set_weights(model.get_weights())
    images = rng.standard_normal((2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(fixed(images), model(images), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="at least 32x32"):
        create_model("resnext50_32x4d", input_shape=(16, None, 3))


@pytest.mark.parametrize("in_channels", [1, 3, 4])
def test_any_number_of_input_channels(in_channels):
    by_shape = build_resnext(**{**TINY, "input_shape": (8, 8, in_channels)})
    by_count = build_resnext(**{**TINY, "input_shape": None}, in_channels=in_channels)
    assert tuple(by_count.input.shape) == (None, 32, 32, in_channels)
    for model in (by_shape, by_count):
        assert tuple(model.get_layer("stem_conv").kernel.shape) == (3, 3, in_channels, 64)
    x = RNG.standard_normal((2, 8, 8, in_channels)).astype("float32")
    assert by_shape(x).shape == (2, 1000)


def test_create_model_in_channels_override():
    model = create_model(
        "resnext50_32x4d", in_channels=1, include_top=False, input_shape=(None, None, 1)
    )
    assert tuple(model.input.shape) == (None, None, None, 1)
    assert tuple(model.get_layer("stem_conv").kernel.shape) == (7, 7, 1, 64)
    assert model(np.zeros((1, 64, 48, 1), "float32")).shape == (1, 2, 2, 2048)
    with pytest.raises(ValueError, match=r"contradicts in_channels=4"):
        create_model("resnext29_8x64d", in_channels=4, input_shape=(32, 32, 3))


@pytest.mark.parametrize("stem,depth,size,kernel", [("cifar", 11, 8, 3), ("imagenet", 50, 64, 7)])
def test_flops_follow_the_input_channels(stem, depth, size, kernel):
    def flops(channels):
        model = build_resnext(
            depth, cardinality=2, base_width=4, stem=stem, input_shape=(size, size, channels)
        )
        return resnext_tf.count_flops(model)

    stem_side = size if stem == "cifar" else size // 2  # the ImageNet stem conv has stride 2
    per_channel = stem_side * stem_side * 64 * kernel * kernel
    assert flops(4) - flops(3) == per_channel
    assert flops(3) - flops(1) == 2 * per_channel
