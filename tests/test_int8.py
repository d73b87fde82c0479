"""INT8 exports of a trained model against its float32 exports, in every INT8 format.

A depth-11 CIFAR ResNeXt 2x4d is trained for a few seconds on a CIFAR-10 python-version folder
written here: each image is its class colour, shifted by up to COLOUR_SHIFT per channel (so
that neighbouring classes overlap), with a disc of a random colour on it and pixel noise; the
model reaches about 90%, not 100%. Each format is exported in float32 and in INT8, calibrated
on the folder's training images, and both run in the format's runtime on the test split.
"""

import json
import os
import pickle
import tarfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from data.image_samples import COLOURS, encode, natural_image

import resnext_tf
from resnext_tf import export, registry
from resnext_tf.contract import DataContract
from resnext_tf.data import calibration, cifar, evaluation, transforms
from resnext_tf.errors import DataError
from resnext_tf.export import cli, formats, quantize, runtimes

# Per image its class colour (COLOURS) shifted by up to COLOUR_SHIFT per channel, a disc of a
# random colour covering up to a third of it, and Gaussian noise of PIXEL_NOISE.
COLOUR_SHIFT = 70.0
PIXEL_NOISE = 40.0
TRAIN_PER_BATCH, TEST_IMAGES = 400, 1000
EPOCHS, BATCH, LEARNING_RATE = 2, 32, 5e-3
# What the INT8 exports must keep of the float32 ones on the test split.
MIN_AGREEMENT = 0.98
MAX_ACCURACY_DROP = 0.01


def noisy_colour_images(labels, rng):
    """uint8 [n, 32, 32, 3]: the class colour shifted, a random disc on it, noise."""
    n = len(labels)
    yy, xx = np.mgrid[0:32, 0:32]
    colour = COLOURS[labels] + rng.uniform(-COLOUR_SHIFT, COLOUR_SHIFT, (n, 3))
    cy, cx, radius = rng.uniform(6, 26, n), rng.uniform(6, 26, n), rng.uniform(5, 10, n)
    disc = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    disc = disc <= (radius**2)[:, None, None]
    blob = rng.uniform(0, 255, (n, 1, 1, 3))
    image = np.where(disc[..., None], blob, colour[:, None, None, :])
    image = image + rng.normal(0, PIXEL_NOISE, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_cifar10(folder, rng):
    """The CIFAR-10 python version: data_batch_1..5 and test_batch, pickled as the original."""
    os.makedirs(folder)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, TEST_IMAGES if name == "test_batch" else TRAIN_PER_BATCH)
        images = noisy_colour_images(labels, rng)
        data = images.transpose(0, 3, 1, 2).reshape(len(labels), 3 * 32 * 32)
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"data": data, b"labels": labels.tolist()}, f)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    # Not named cifar-10-batches-py: official names are checked against the official MD5.
    folder = str(tmp_path_factory.mktemp("int8") / "colour-cifar")
    write_cifar10(folder, np.random.default_rng(0))
    return folder


def evaluation_images(images):
    """The CIFAR-10 evaluation transform ((pixel - mean) / std) of uint8 images."""
    return transforms.cifar_eval(tf.constant(images, tf.float32), "cifar10").numpy()


@pytest.fixture(scope="module")
def trained(cifar_dir):
    """(model, test images, test labels): the model trained on the folder's training split."""
    splits = cifar.load_cifar("cifar10", cifar_dir)
    train, test = splits["train"], splits["eval"]
    keras.utils.set_random_seed(0)
    model = resnext_tf.build_resnext(
        depth=11, cardinality=2, base_width=4, stem="cifar", num_classes=10, name="colours"
    )
    steps = EPOCHS * (train.num_examples // BATCH)
    model.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(LEARNING_RATE, steps)
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    model.fit(
        evaluation_images(train.images), train.labels, batch_size=BATCH, epochs=EPOCHS, verbose=0
    )
    return model, evaluation_images(test.images), test.labels


@pytest.fixture(scope="module")
def exports(trained, cifar_dir, tmp_path_factory):
    """{(format, precision): version folder}: float32 and INT8 of each INT8 format."""
    model, _, _ = trained
    root = tmp_path_factory.mktemp("exports")
    contract = DataContract.for_dataset("cifar10", 10, 32)
    paths = {}
    for fmt in quantize.INT8_FORMATS:
        for precision in export.PRECISIONS:
            paths[(fmt, precision)] = export.export_model(
                model,
                root,
                f"{fmt}_{precision}",
                1,
                fmt=fmt,
                precision=precision,
                calibration_data=cifar_dir if precision == "int8" else None,
                data_config=contract,
            )
    return paths


def logits_of(path, images):
    run = runtimes.runtime(runtimes.open_export(path))
    return np.concatenate([run(images[i : i + 250]) for i in range(0, len(images), 250)])


@pytest.fixture(scope="module")
def results(trained, exports):
    """{(format, precision): logits on the test split}, and the table of the docs printed."""
    model, images, labels = trained
    logits = {key: logits_of(path, images) for key, path in exports.items()}
    keras_accuracy = np.mean(model.predict(images, verbose=0).argmax(1) == labels)
    print(f"\nKeras float32 accuracy {100 * keras_accuracy:.2f}% on {len(labels)} test images")
    print("| format | float32 accuracy | INT8 accuracy | INT8 top-1 agreement |")
    for fmt in quantize.INT8_FORMATS:
        f32, int8 = logits[(fmt, "float32")], logits[(fmt, "int8")]
        print(
            f"| {fmt} | {100 * np.mean(f32.argmax(1) == labels):.2f}% "
            f"| {100 * np.mean(int8.argmax(1) == labels):.2f}% "
            f"| {100 * np.mean(int8.argmax(1) == f32.argmax(1)):.2f}% |"
        )
    return logits


def test_the_model_is_trained_but_not_perfect(trained, results):
    _, _, labels = trained
    accuracy = np.mean(results[("openvino", "float32")].argmax(1) == labels)
    assert 0.7 <= accuracy <= 0.97, accuracy


@pytest.mark.parametrize("fmt", quantize.INT8_FORMATS)
def test_int8_agrees_with_float32(trained, results, fmt):
    _, _, labels = trained
    f32, int8 = results[(fmt, "float32")], results[(fmt, "int8")]
    agreement = np.mean(int8.argmax(1) == f32.argmax(1))
    drop = np.mean(f32.argmax(1) == labels) - np.mean(int8.argmax(1) == labels)
    assert agreement >= MIN_AGREEMENT and drop <= MAX_ACCURACY_DROP, (agreement, drop)
    assert int8.dtype == np.float32 and int8.shape == f32.shape
    # The logits are float: none of the formats leaves them on an 8-bit grid.
    assert len(np.unique(int8)) > int8.size // 2


@pytest.mark.parametrize("fmt", quantize.INT8_FORMATS)
def test_export_info_records_the_calibration_and_the_agreement(exports, cifar_dir, fmt):
    with open(os.path.join(exports[(fmt, "int8")], formats.INFO_FILE)) as f:
        info = json.load(f)
    assert info["format"] == fmt and info["precision"] == "int8" and info["dtype"] == "float32"
    assert info["input"]["dtype"] == info["output"]["dtype"] == "float32"
    assert DataContract.from_json(info["contract"]) == DataContract.for_dataset("cifar10", 10, 32)
    record = info["calibration"]
    assert record["source"] == os.path.abspath(cifar_dir)
    assert record["kind"] == "cifar10 python version, training split"
    assert record["images"] == calibration.DEFAULT_COUNT
    assert record["source_images"] == 5 * TRAIN_PER_BATCH and record["skipped"] == 0
    assert len(record["sha256"]) == 64
    agreement = info["agreement"]
    assert agreement["images"] == calibration.DEFAULT_HELD_OUT
    assert agreement["top1_agreement"] >= MIN_AGREEMENT
    assert info["quantization"]["tool"] and info["quantization"]["float"]
    with open(os.path.join(exports[(fmt, "float32")], formats.INFO_FILE)) as f:
        assert json.load(f)["precision"] == "float32"


def test_the_models_compute_in_int8(exports):
    import onnx
    import openvino
    from ai_edge_litert.interpreter import Interpreter

    # OpenVINO: every convolution and matrix product runs on 8-bit integers.
    path = os.path.join(exports[("openvino", "int8")], "model.xml")
    compiled = openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ops = compiled.get_runtime_model().get_ordered_ops()
    precisions = {
        op.get_rt_info()["runtimePrecision"].astype(str)
        for op in ops
        if op.get_rt_info()["layerType"].astype(str) in ("Convolution", "FullyConnected")
    }
    assert precisions and precisions <= {"u8", "i8"}, precisions
    # ONNX Runtime: quantized weights beside every Conv; the classifier keeps float weights and
    # nothing after it is quantized again (its input, the pooled features, is 8-bit).
    graph = onnx.load(os.path.join(exports[("onnx", "int8")], "model.onnx")).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(n.input[1] in dequantized for n in convs)
    (head,) = [n for n in graph.node if n.op_type == "MatMul"]
    assert head.input[1] not in dequantized
    classifier = [n for n in graph.node if n.name in quantize.classifier_nodes(graph)]
    assert head in classifier and not {o for n in classifier for o in n.output} & quantized
    # LiteRT: int8 convolution weights; float32 in and out.
    interpreter = Interpreter(os.path.join(exports[("litert", "int8")], "model.tflite"))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    conv_weights = [
        tensors[op["inputs"][1]]["dtype"]
        for op in interpreter._get_ops_details()
        if op["op_name"] == "CONV_2D"
    ]
    assert conv_weights and set(conv_weights) == {np.int8}
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert interpreter.get_output_details()[0]["dtype"] == np.float32


def test_cli_refuses_int8_without_a_format_that_has_it(tmp_path, capsys):
    args = ["--model=resnext50_32x4d", "--weights=w.weights.h5", f"--export_dir={tmp_path}"]
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args([*args, "--precision=int8", f"--calibration_data={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2
    assert "--format=saved_model has no INT8 export" in err
    assert "('onnx', 'openvino', 'litert')" in err
    for extra, message in [
        (["--format=onnx", "--precision=int8"], "needs --calibration_data"),
        (["--format=onnx", f"--calibration_data={tmp_path}"], "applies to --precision=int8"),
        (["--format=openvino", "--precision=int8", "--dtype=bfloat16", "--calibration_data=x"],
         "keeps its float layers in float32"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit):
            cli.parse_args([*args, *extra])
        assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Calibration sources, and the command line


def test_a_cifar_archive_calibrates_like_its_folder(cifar_dir, tmp_path):
    contract = DataContract("cifar10", 32)
    archive = str(tmp_path / "colours.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cifar_dir, arcname=cifar.LAYOUTS["cifar10"].folder)
    folder = calibration.load_calibration(cifar_dir, contract, count=20, held_out=10)
    packed = calibration.load_calibration(archive, contract, count=20, held_out=10)
    np.testing.assert_array_equal(folder.images, packed.images)
    assert folder.record["sha256"] == packed.record["sha256"]
    assert folder.images.shape == (20, 32, 32, 3) and folder.held_out.shape == (10, 32, 32, 3)
    # The held-out images are other images than the calibration ones.
    flat = folder.images.reshape(20, -1)
    assert not any((flat == image.reshape(1, -1)).all(1).any() for image in folder.held_out)
    # The CIFAR images go through the evaluation transform exactly: (pixel - mean) / std.
    index = int(folder.record["first"][0][len("train[") : -1])
    raw = cifar.load_cifar("cifar10", cifar_dir)["train"].images[index]
    np.testing.assert_allclose(folder.images[0], evaluation_images(raw[None])[0], atol=1e-5)
    fewer = calibration.load_calibration(cifar_dir, contract, count=19, held_out=10)
    assert fewer.record["sha256"] != folder.record["sha256"]


def test_an_imagenet_folder_calibrates_from_train(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for wnid in ("n01440764", "n01443537"):
            (tmp_path / split / wnid).mkdir(parents=True)
            for i in range(count):
                data = encode(natural_image(rng, 60 + i, 80))
                (tmp_path / split / wnid / f"{i}.JPEG").write_bytes(data)
    contract = DataContract("imagenet", 32)
    found = calibration.load_calibration(str(tmp_path), contract, count=5, held_out=4)
    assert found.record["kind"] == "ImageNet-style folder, train/"
    assert found.record["source_images"] == 12 and found.images.shape == (5, 32, 32, 3)
    assert all(name.startswith("n014") for name in found.record["first"])
    # The evaluation transform of the contract: resize the shorter side, centre crop.
    first = tmp_path / "train" / found.record["first"][0]
    expected = evaluation.eval_transform(contract)(tf.constant(first.read_bytes())).numpy()
    np.testing.assert_allclose(found.images[0], expected, atol=1e-5)
    # A source smaller than asked: at most half held out.
    small = calibration.load_calibration(str(tmp_path), contract, count=300, held_out=200)
    assert (len(small.images), len(small.held_out)) == (6, 6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no image"):
        calibration.load_calibration(str(tmp_path / "empty"), contract)
    with pytest.raises(DataError, match="does not exist"):
        calibration.load_calibration(str(tmp_path / "missing"), contract)


def test_a_link_swapped_into_a_photo_folder_is_not_followed(tmp_path):
    # The scan skips symbolic links; a file replaced by one between the scan and the read is
    # refused at the read (and so skipped and counted), not followed out of the folder.
    rng = np.random.default_rng(1)
    (tmp_path / "photos").mkdir()
    for i in range(3):
        (tmp_path / "photos" / f"{i}.jpg").write_bytes(encode(natural_image(rng, 40, 40)))
    (tmp_path / "secret.jpg").write_bytes(encode(natural_image(rng, 40, 40)))
    kind, names, read = calibration.open_source(str(tmp_path / "photos"), DataContract("cifar10"))
    assert kind == "image folder" and names == ["0.jpg", "1.jpg", "2.jpg"]
    os.remove(tmp_path / "photos" / "1.jpg")
    os.symlink(tmp_path / "secret.jpg", tmp_path / "photos" / "1.jpg")
    assert read(0) == (tmp_path / "photos" / "0.jpg").read_bytes()
    with pytest.raises(OSError):
        read(1)


def test_cli_exports_int8_with_a_photo_folder(tmp_path, monkeypatch, capsys):
    photos = tmp_path / "photos" / "nested"
    photos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        (photos / f"{i}.png").write_bytes(encode(natural_image(rng, 40, 50), "PNG"))
    # A tiny variant registered for the test keeps the model small (as in test_predict.py).
    monkeypatch.setitem(registry.MODEL_SPECS, "resnext11_2x4d", ("cifar10", 11, 2, 4, "resnext_C"))
    keras.utils.set_random_seed(0)
    weights = str(tmp_path / "tiny.weights.h5")
    resnext_tf.create_model("resnext11_2x4d").save_weights(weights)
    args = ["--model=resnext11_2x4d", f"--weights={weights}", f"--export_dir={tmp_path}"]
    args += ["--format=litert", "--precision=int8", f"--calibration_data={tmp_path / 'photos'}"]
    args += ["--calibration_images=8", "--held_out_images=4", "--model_name=cli"]
    assert cli.main(args) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    with open(os.path.join(path, formats.INFO_FILE)) as f:
        info = json.load(f)
    assert info["precision"] == "int8" and info["calibration"]["images"] == 8
    assert info["calibration"]["kind"] == "image folder" and info["agreement"]["images"] == 4
    assert info["calibration"]["first"][0].startswith("nested" + os.sep)
