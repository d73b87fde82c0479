"""Tests of the throughput harness: timing arithmetic, flags, BN folding, one end-to-end run."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from child_process import JAX_CPU, run_child

from benchmarks import compare, model_bench, timing
from resnext_tf import build_resnext, fold, hardware

TINY = dict(depth=11, stem="cifar", cardinality=4, base_width=4, input_shape=(8, 8, 3))
RNG = np.random.default_rng(0)


def randomize_batchnorm(model):
    """Gives every BN non-trivial statistics so a wrong fold cannot pass."""
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.gamma.assign(RNG.uniform(0.5, 1.5, shape))
            layer.beta.assign(RNG.normal(0, 0.5, shape))
            layer.moving_mean.assign(RNG.normal(0, 0.5, shape))
            layer.moving_variance.assign(RNG.uniform(0.5, 2.0, shape))


def fold_bn_step(model, fold_bn=True, dtype="float32"):
    """The harness's TensorFlow inference step of `model`, folded by resnext_tf.fold or not."""
    cfg = model_bench.BenchmarkConfig(mode="infer", fold_bn=fold_bn, dtype=dtype)
    step, _, _ = model_bench.STEP_BUILDERS["tensorflow"](model, cfg)
    return step


def step_graph(step, images):
    specs = tf.TensorSpec(images.shape, tf.float32), tf.TensorSpec(images.shape[:1], tf.int32)
    return step.get_concrete_function(*specs).graph


def step_graph_ops(model, images, fold_bn=True):
    return {op.type for op in step_graph(fold_bn_step(model, fold_bn), images).get_operations()}


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(conv_impl="split"),
        dict(conv_impl="grouped"),
        dict(conv_impl="split", shortcut_type="C"),
        dict(conv_impl="split", shortcut_type="A"),
        dict(conv_impl="split", bottleneck_type="resnext_B"),
        dict(depth=50, stem="imagenet", cardinality=2, input_shape=(32, 32, 3)),
    ],
    ids=["split", "grouped", "shortcut_C", "shortcut_A", "resnext_B", "imagenet_stem"],
)
def test_fold_bn_step_matches_inference_outputs(kwargs):
    # --fold_bn times resnext_tf.fold's graph (tests/test_deploy.py tests the fold itself): the
    # harness's step returns the Keras model's inference outputs.
    model = build_resnext(**{**TINY, "num_classes": 7, **kwargs})
    randomize_batchnorm(model)
    images = RNG.normal(size=(2, *model.input_shape[1:])).astype("float32")
    expected = model(images, training=False).numpy()
    got = fold_bn_step(model)(images, np.zeros(2, "int32")).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("bottleneck_type", ["resnext_C", "resnext_B"])
def test_fold_bn_step_has_no_batchnorm(bottleneck_type):
    images = np.zeros((1, 8, 8, 3), "float32")
    model = build_resnext(**TINY, bottleneck_type=bottleneck_type)
    # Inference BN is FusedBatchNormV3 (resnext_tf's BatchNorm) or rsqrt(var + eps) and
    # element-wise ops (Keras'); the unfolded step has one of them, the folded step neither
    # (resnext_tf.fold folds every block type).
    batchnorm_ops = {"FusedBatchNormV3", "Rsqrt"}
    assert batchnorm_ops & step_graph_ops(model, images, fold_bn=False)
    assert not batchnorm_ops & step_graph_ops(model, images)


def test_fold_bn_step_runs_grouped_convolution_natively():
    images = np.zeros((1, 8, 8, 3), "float32")
    grouped = step_graph_ops(build_resnext(**TINY, conv_impl="grouped"), images)
    split = step_graph_ops(build_resnext(**TINY, conv_impl="split"), images)
    assert "Split" not in grouped and "Split" in split


def test_fold_bn_step_computes_in_bfloat16_with_dtype_bfloat16():
    # --dtype=bfloat16 --fold_bn times the fold's bfloat16 graph: bfloat16 convolutions, float32
    # logits within the fold's tolerance of the float32 model's.
    model = build_resnext(**TINY, num_classes=7)
    randomize_batchnorm(model)
    images = RNG.normal(size=(2, 8, 8, 3)).astype("float32")
    expected = model(images, training=False).numpy()
    step = fold_bn_step(model, dtype="bfloat16")
    got = step(images, np.zeros(2, "int32"))
    assert got.dtype == tf.float32
    bound = fold.BF16_LOGIT_TOLERANCE * np.abs(expected).max()
    assert np.abs(got.numpy() - expected).max() <= bound
    convs = [op for op in step_graph(step, images).get_operations() if op.type == "Conv2D"]
    assert convs and {op.get_attr("T") for op in convs} == {tf.bfloat16}


def test_time_windows_counts_calls_and_syncs():
    calls, synced = [], []
    warmup_s, seconds, cpu_seconds = timing.time_windows(
        lambda: calls.append(1) or len(calls), synced.append, steps=3, windows=4, warmup=2
    )
    assert len(calls) == 2 + 3 * 4
    # One sync after the warm-up, then one at the end of every window, on its last step.
    assert synced == [2, 5, 8, 11, 14]
    assert len(seconds) == 4 and warmup_s >= 0 and cpu_seconds >= 0


def test_throughput_summarises_windows():
    result = timing.throughput(batch_size=16, steps=4, seconds=[2.0, 4.0, 1.0], cpu_seconds=8)
    assert result == {
        "images_per_sec": 32.0,
        "images_per_sec_min": 16.0,
        "images_per_sec_max": 64.0,
        "step_ms": 500.0,
        "images_per_cpu_sec": 24.0,
    }


def test_parse_args_reads_every_field():
    cfg = model_bench.parse_args(
        ["--mode=infer", "--batch_size=8", "--dtype=bfloat16", "--fold_bn", "--steps=2"]
    )
    assert (cfg.mode, cfg.batch_size, cfg.dtype, cfg.fold_bn, cfg.steps) == (
        "infer",
        8,
        "bfloat16",
        True,
        2,
    )
    assert cfg.image_size == 224 and cfg.conv_impl == "auto"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="eval"), r"mode='eval'"),
        (dict(dtype="int8"), r"dtype='int8'"),
        (dict(jit_compile="yes"), r"jit_compile='yes'"),
        (dict(model="resnext51"), r"model='resnext51'"),
        (dict(conv_impl="fast"), r"conv_impl='fast'"),
        (dict(batch_size=0), r"batch_size=0"),
        (dict(mode="train", fold_bn=True), r"fold_bn=True with mode='train'"),
        (dict(mode="infer", fold_bn=True, dtype="float16"), r"fold_bn=True with dtype='float16'"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        model_bench.BenchmarkConfig(**kwargs)


def test_run_benchmark_end_to_end_emits_parsable_result(capsys):
    cfg = model_bench.BenchmarkConfig(
        mode="infer", batch_size=1, image_size=32, conv_impl="grouped", fold_bn=True,
        steps=1, windows=3, warmup=1,
    )  # fmt: skip
    result = model_bench.run_benchmark(cfg)
    timing.emit(result)
    line = capsys.readouterr().out.splitlines()[-1]
    assert json.loads(line.removeprefix(timing.JSON_PREFIX)) == result
    assert result["conv_impl"] == "grouped" and result["fold_bn_max_abs_diff"] < 1e-4
    # One image per step: images/s is the inverse of the step time.
    assert result["images_per_sec"] == pytest.approx(1e3 / result["step_ms"], rel=0.01)
    assert result["peak_rss_mb"] > 100


BACKEND_STEP_CHILD = textwrap.dedent(
    """
    import json, numpy as np, keras
    from benchmarks import model_bench
    from resnext_tf import build_resnext
    keras.utils.set_random_seed(0)
    model = build_resnext(**TINY, num_classes=5)
    step, sync, jit = model_bench.STEP_BUILDERS[keras.backend.backend()](
        model, model_bench.BenchmarkConfig(mode="train"))
    rng = np.random.default_rng(0)
    images = keras.ops.convert_to_tensor(rng.normal(size=(8, 8, 8, 3)).astype("float32"))
    labels = keras.ops.convert_to_tensor(np.arange(8) % 5)
    losses = []
    for _ in range(6):
        out = step(images, labels)
        sync(out)
        losses.append(float(np.asarray(keras.ops.convert_to_numpy(out))))
    print(json.dumps(losses))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch", "tensorflow"])
def test_train_step_of_every_backend_fits_a_batch(backend):
    # Six SGD steps (lr 0.1, momentum 0.9) on one batch of 8 must drive the loss well down:
    # checks that the backend's step really updates the weights it reads next time (the JAX
    # step donates and threads its state).
    code = f"TINY = {TINY!r}\n" + BACKEND_STEP_CHILD
    env = JAX_CPU if backend == "jax" else {"KERAS_BACKEND": backend}
    losses = json.loads(run_child(code, **env).strip().splitlines()[-1])
    assert losses[0] > 1.0 and min(losses[-3:]) < 0.5 * losses[0], losses


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_compare_runs_ours_and_the_torchvision_peer():
    # benchmarks.compare runs each side in its own process; both rows and the ratio to the
    # peer appear, so the peer script imports and runs with the library's current names.
    command = [sys.executable, "-m", "benchmarks.compare", "--mode=train", "--batch_size=2"]
    command += ["--image_size=32"]
    command += ["--steps=1", "--windows=1", "--warmup=1", "--ours=auto,auto+nodnn"]
    command += ["--peers=eager"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The output starts with the command that reproduces it, then the machine.
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("command: python -m benchmarks.compare --mode=train ")
    assert lines[1].startswith(f"CPU: {hardware.cpu_model()} (")
    rows = [line for line in lines if line.startswith("| ")]
    assert rows[0].endswith("| x torchvision eager |")
    cells = [[cell.strip() for cell in row.split("|")[1:3]] for row in rows[1:]]
    # oneDNN as the library leaves it (on, by TensorFlow or at the library's request), and off.
    assert cells == [
        ["resnext_tf[tensorflow] auto", "on"],
        ["resnext_tf[tensorflow] auto+nodnn", "off"],
        ["torchvision eager", "-"],
    ]
    assert rows[-1].split("|")[-2].strip() == "1.00"


def test_exported_tokens_name_the_artefact():
    assert compare.exported_artefact("openvino+int8") == ("openvino", "int8", "f32")
    assert compare.exported_artefact("onnx+int8") == ("onnx", "int8", None)
    assert compare.exported_artefact("saved_model+bf16") == ("saved_model", "bfloat16", None)
    for token in ("saved_model+int8", "openvino+int8+bf16", "litert+int4"):
        with pytest.raises(ValueError, match="Unknown exported configuration"):
            compare.exported_artefact(token)


@pytest.mark.slow
def test_compare_times_int8_exports_and_the_fx_int8_peer(tmp_path):
    # A tiny training run exported float32 and INT8 (calibrated on generated photos) and the
    # FX INT8 peer, each timed once at tiny sizes: every token runs end to end.
    run = str(tmp_path / "run")
    tiny_run = ["--data_dir=synthetic", "--depth=11", "--cardinality=2", "--base_width=4"]
    tiny_run += ["--batch_size=8", "--train_steps=2", "--epochs=1", f"--model_dir={run}"]
    proc = subprocess.run(
        [sys.executable, "run_cifar.py", *tiny_run],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tokens = "saved_model,openvino+int8,onnx+int8,litert+int8"
    command = [sys.executable, "-m", "benchmarks.compare", "--ours=", "--peers=fx_int8"]
    command += [f"--exported={tokens}", f"--export_model_dir={run}", "--batch_size=2"]
    command += ["--image_size=32", "--steps=1", "--windows=1", "--warmup=1"]
    command += ["--latency_calls=2", "--calibration_images=4", "--photo_size=40x30"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any(
        line.startswith("INT8 exports: calibrated on 4 generated (synthetic) photos")
        for line in lines
    )
    rows = [line for line in lines if line.startswith("| ")]
    assert rows[0].endswith("| bs1 p50 ms | bs1 p99 ms | x torchvision fx_int8 |")
    labels = [row.split("|")[1].strip() for row in rows[1:]]
    assert labels == ["torchvision fx_int8"] + [f"exported {t}" for t in tokens.split(",")]
    # Every row has its batch-1 latency.
    assert all(row.split("|")[8].strip() != "-" for row in rows[1:])


def test_compare_fails_when_a_configuration_fails(monkeypatch, capsys):
    def run(label, command, parse, env):
        # Our configuration measures; the peer fails as a broken import does (no JSON line).
        return {} if label.startswith("torchvision") else {label: {"images_per_sec": 12.0}}

    monkeypatch.setattr(compare, "run", run)
    with pytest.raises(SystemExit, match=r"1 configuration\(s\) failed: torchvision eager"):
        compare.main(["--ours=grouped", "--peers=eager"])
    assert "| resnext_tf[tensorflow] grouped | - | 12.00 |" in capsys.readouterr().out


PEER_IMPORTS_CHILD = textwrap.dedent(
    """
    import json, runpy, sys
    module, *argv = sys.argv[1:]
    # As `python -m module`: argv, and the module run as __main__.
    sys.argv = [module, *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    frameworks = ("keras", "tensorflow", "jax", "resnext_tf")
    print(json.dumps(sorted(m for m in frameworks if m in sys.modules)))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["infer", "train"])
def test_torchvision_peer_runs_without_keras_or_the_package(mode, tmp_path):
    # The peer times torchvision alone: its process imports neither Keras, TensorFlow nor JAX,
    # and it runs from any working directory with the repository on its PYTHONPATH.
    argv = ["benchmarks.torchvision_bench", f"--mode={mode}", "--batch_size=2", "--image_size=32"]
    argv += ["--steps=1", "--windows=1", "--warmup=1", "--lr=0.1", "--momentum=0.9"]
    proc = subprocess.run(
        [sys.executable, "-c", PEER_IMPORTS_CHILD, *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert json.loads(lines[-1]) == []
    line = next(x for x in lines if x.startswith(timing.JSON_PREFIX))
    result = json.loads(line.removeprefix(timing.JSON_PREFIX))
    assert result["framework"] == "torchvision" and result["mode"] == mode
    assert result["images_per_sec"] > 0


def test_torchvision_peer_train_needs_the_optimizer_settings():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.torchvision_bench", "--mode=train"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2 and "needs --lr and --momentum" in proc.stderr
