"""python -m resnext_tf.predict: a folder of photos through a trained run, a SavedModel and a
weights file; the formats parse, an unreadable file is reported and the others predicted."""

import contextlib
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from child_process import peak_growth
from data.image_samples import encode, natural_image

import resnext_tf
from resnext_tf import checkpoints, contract, export, registry, runs
from resnext_tf.data import evaluation
from resnext_tf.data.config import DataConfig
from resnext_tf.errors import EXIT_USER_ERROR
from resnext_tf.predict import cli, output, predictors
from resnext_tf.training import modeling
from resnext_tf.training.config import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A depth-11 CIFAR ResNeXt 2x4d, trained for two steps on synthetic CIFAR-10.
TINY_RUN = [
    "--data_dir=synthetic",
    "--depth=11",
    "--cardinality=2",
    "--base_width=4",
    "--shortcut_type=A",
    "--batch_size=8",
    "--train_steps=2",
    "--epochs=1",
]
GOOD = ("a.jpg", os.path.join("sub", "b.PNG"), os.path.join("sub", "deeper", "c.bmp"))
BAD = os.path.join("sub", "bad.jpg")


def env():
    return {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of photo-like images (a nested subfolder, mixed-case extensions), one file
    named .jpg that is not an image, and a text file that is not looked at."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / GOOD[0]).write_bytes(encode(natural_image(rng, 90, 120)))
    (root / GOOD[1]).write_bytes(encode(natural_image(rng, 64, 48), "PNG"))
    (root / GOOD[2]).write_bytes(encode(natural_image(rng, 40, 40), "BMP"))
    (root / BAD).write_bytes(b"this is not a JPEG")
    (root / "notes.txt").write_text("not an image either, and not named like one")
    return str(root)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("run") / "run")
    result = subprocess.run(
        [sys.executable, "run_cifar.py", *TINY_RUN, f"--model_dir={model_dir}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir


@pytest.fixture(scope="module")
def run_model(run_dir):
    found = checkpoints.find_checkpoint(run_dir)
    state = checkpoints.read_state(found)
    # The trainer's own construction of the run's model, from the configuration it recorded.
    config = TrainConfig(**{k: v for k, v in state["config"].items() if k in TRAIN_FIELDS})
    model = modeling.build_model(config, (32, 32, 3), state["num_classes"])
    checkpoints.restore_model_weights(model, found)
    return contract.attach(model, contract.DataContract.from_json(state["contract"]))


TRAIN_FIELDS = set(TrainConfig.__dataclass_fields__)
CIFAR10_NAMES = contract.dataset_classes("cifar10", 10)[0]


@pytest.fixture(scope="module")
def saved_model(run_model, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving")
    return export.export_saved_model(run_model, base, "tiny", 1, warmup=False)


def run_main(*argv):
    """predict.main in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        # The one-line report of a user error goes to sys.stderr.
        with contextlib.redirect_stderr(err):
            code = cli.main(list(argv), stdout=out, stderr=err)
    except SystemExit as e:
        code = e.code
    return code, out.getvalue(), err.getvalue()


def good_paths(photos):
    return [os.path.join(photos, name) for name in GOOD]


def assert_same_predictions(out, from_run, fields):
    """The JSON rows of two predict runs name the same images and, per image, the same
    predictions (`fields` of each, and probabilities to 1e-4)."""
    served, ran = json.loads(out), json.loads(from_run)
    assert [row["image"] for row in served] == [row["image"] for row in ran]
    for a, b in zip(served, ran, strict=True):
        for field in fields:
            assert [p[field] for p in a["predictions"]] == [p[field] for p in b["predictions"]]
        np.testing.assert_allclose(
            [p["probability"] for p in a["predictions"]],
            [p["probability"] for p in b["predictions"]],
            rtol=1e-4,
        )


def check_skipped_bad_file(err, photos):
    """One line names the bad file and the decoder's reason (its wording is TensorFlow's)."""
    lines = [line for line in err.splitlines() if line.startswith("skipped")]
    assert len(lines) == 1, err
    prefix = f"skipped {os.path.join(photos, BAD)}: not a decodable image: "
    assert lines[0].startswith(prefix) and len(lines[0]) > len(prefix) + 5


def expected_probabilities(model, paths):
    """The model's softmax on the export's evaluation transform of each file."""
    transform = evaluation.eval_transform(contract.DataContract("cifar10"))
    images = np.stack([transform(tf.constant(open(p, "rb").read())).numpy() for p in paths])
    return tf.nn.softmax(model(images, training=False)).numpy()


def test_run_folder_as_json(run_dir, run_model, photos):
    code, out, err = run_main(f"--model_dir={run_dir}", "--output_format=json", photos)
    assert code == 1  # one file skipped
    check_skipped_bad_file(err, photos)
    rows = json.loads(out)
    assert [row["image"] for row in rows] == sorted(good_paths(photos))
    expected = expected_probabilities(run_model, [row["image"] for row in rows])
    for row, probabilities in zip(rows, expected, strict=True):
        predictions = row["predictions"]
        assert [p["rank"] for p in predictions] == [1, 2, 3, 4, 5]
        top = np.argsort(-probabilities, kind="stable")[:5]
        assert [p["index"] for p in predictions] == top.tolist()
        np.testing.assert_allclose(
            [p["probability"] for p in predictions], probabilities[top], rtol=1e-5
        )
        # A CIFAR-10 run predicts CIFAR-10's names, not ImageNet's.
        assert [p["label"] for p in predictions] == [CIFAR10_NAMES[i] for i in top]
        assert "wnid" not in predictions[0]


def test_run_folder_as_csv_and_table(run_dir, photos):
    code, out, err = run_main(f"--model_dir={run_dir}", "--output_format=csv", "--top_k=3", photos)
    assert code == 1 and err.count("skipped") == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    assert tuple(rows[0]) == output.CSV_COLUMNS
    assert len(rows) == 3 * len(GOOD)
    assert {row["image"] for row in rows} == set(good_paths(photos))
    assert [row["rank"] for row in rows[:3]] == ["1", "2", "3"]
    assert all(row["label"] in CIFAR10_NAMES for row in rows)
    assert all(0 < float(row["probability"]) < 1 for row in rows)

    code, table, _ = run_main(f"--model_dir={run_dir}", "--top_k=2", *good_paths(photos))
    assert code == 0
    lines = table.splitlines()
    assert lines[0].split() == ["image", "rank", "probability", "index", "label"]
    assert len(lines) == 1 + 2 * len(GOOD)
    assert lines[1].startswith(good_paths(photos)[0]) and lines[2].split()[0] == "2"


# With batches of 1 the bad image fails its own request; with 2 it fails a request with a
# good image, which is then predicted alone.
@pytest.mark.parametrize("batch_size", [1, 2])
def test_saved_model_agrees_with_the_run(saved_model, run_dir, photos, batch_size):
    _, from_run, _ = run_main(f"--model_dir={run_dir}", "--output_format=json", photos)
    base = os.path.dirname(saved_model)  # the TF Serving model base: its latest version is used
    code, out, err = run_main(
        f"--saved_model={base}", "--output_format=json", f"--batch_size={batch_size}", photos
    )
    assert code == 1
    check_skipped_bad_file(err, photos)
    assert_same_predictions(out, from_run, fields=("index",))


def test_command_line_on_a_saved_model(saved_model, photos):
    result = subprocess.run(
        [sys.executable, "-m", "resnext_tf.predict", f"--saved_model={saved_model}", photos],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env(),
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert sum(line.startswith("skipped") for line in result.stderr.splitlines()) == 1
    assert BAD in result.stderr
    assert all(path in result.stdout for path in good_paths(photos))


# predict in a fresh process: a warm-up on one photo, then the measured call, whose peak
# memory over the warm-up's is its own (tests/child_process.py).
SPECIAL_FILES_SETUP = """
import contextlib, io, time
from resnext_tf.predict import cli

def main(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(argv, stdout=io.StringIO(), stderr=err)
    return code, err.getvalue()

main(WARM_UP)
"""
SPECIAL_FILES_ACTION = """
start = time.time()
code, err = main(ARGV)
print(json.dumps({"code": code, "err": err, "seconds": time.time() - start}), file=sys.stderr)
"""


def test_special_files_are_skipped_unread(saved_model, photos, tmp_path):
    # Before predict read through fileio.read_limited, the FIFO hung it, and /dev/zero and the
    # sparse 2.5 GB file grew its memory without bound.
    folder = tmp_path / "special"
    folder.mkdir()
    good = os.path.join(photos, GOOD[0])
    shutil.copy(good, folder / "a.jpg")
    os.mkfifo(folder / "x.jpg")  # no writer: a blocking open or read waits forever
    with open(folder / "sparse.jpg", "wb") as f:
        f.truncate(2_500_000_000)  # sparse: no block is written
    os.symlink("/dev/zero", folder / "link.jpg")  # inside a folder: passed over
    os.symlink("/dev/zero", tmp_path / "zero.jpg")  # named: opened, and refused
    argv = [f"--saved_model={saved_model}", str(folder), str(tmp_path / "zero.jpg")]
    setup = SPECIAL_FILES_SETUP.replace("WARM_UP", repr([f"--saved_model={saved_model}", good]))
    growth, error, stderr = peak_growth(
        setup, SPECIAL_FILES_ACTION.replace("ARGV", repr(argv)), package_init=True, timeout=120
    )
    assert not error, error
    outcome = json.loads(stderr.strip().splitlines()[-1])
    limit = "exceed the size limit 67108864"
    assert outcome["code"] == 1 and outcome["seconds"] < 30, outcome
    assert [line for line in outcome["err"].splitlines() if line.startswith("skipped")] == [
        f"skipped {folder / 'sparse.jpg'}: cannot read the file: 2500000000 bytes {limit}",
        f"skipped {folder / 'x.jpg'}: cannot read the file: is not a regular file",
        f"skipped {tmp_path / 'zero.jpg'}: cannot read the file: is not a regular file",
    ]
    assert growth < 100, f"+{growth:.0f} MiB"


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--saved_model={saved}", "--ten_crop"], r"--ten_crop does not apply to --saved_model"),
        (["--saved_model={saved}", "--top_k=9"], r"top 5 classes; received --top_k=9"),
        (["--model_dir={photos}"], r"No checkpoint in .*photos.*training run folder"),
        (["--model_dir={run}", "--ten_crop"], r"--ten_crop: ten_crop is an ImageNet evaluation"),
        (["--model_dir={run}", "--model=resnext50_32x4d"], r"differs from the run"),
        (["--model_dir={run}", "--labels={photos}/notes.txt"], r"names 1 classes.*has 10"),
    ],
)
def test_user_errors_are_one_line(argv, match, saved_model, run_dir, photos):
    argv = [a.format(saved=saved_model, photos=photos, run=run_dir) for a in argv]
    code, out, err = run_main(*argv, photos)
    assert code == EXIT_USER_ERROR and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ")
    assert re.search(match, last), last


def test_no_images_is_a_user_error(run_dir, tmp_path):
    code, _, err = run_main(f"--model_dir={run_dir}", str(tmp_path))
    assert code == EXIT_USER_ERROR and "No image files" in err


def test_labels_file_names_the_classes(run_dir, photos, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class-{i}\n" for i in range(10)))
    code, out, _ = run_main(
        f"--model_dir={run_dir}",
        f"--labels={labels}",
        "--output_format=json",
        good_paths(photos)[0],
    )
    assert code == 0
    predictions = json.loads(out)[0]["predictions"]
    assert all(p["label"] == f"class-{p['index']}" for p in predictions)


def test_weights_file_of_a_registered_model(photos, tmp_path, monkeypatch):
    # A tiny variant registered for the test keeps the model small.
    monkeypatch.setitem(registry.MODEL_SPECS, "resnext11_2x4d", ("cifar10", 11, 2, 4, "resnext_C"))
    keras.utils.set_random_seed(0)
    model = resnext_tf.create_model("resnext11_2x4d")
    path = str(tmp_path / "tiny.weights.h5")
    model.save_weights(path)
    code, out, _ = run_main(
        "--model=resnext11_2x4d", f"--weights={path}", "--output_format=json", good_paths(photos)[0]
    )
    assert code == 0
    top = json.loads(out)[0]["predictions"]
    expected = expected_probabilities(model, good_paths(photos)[:1])[0]
    assert [p["index"] for p in top] == np.argsort(-expected, kind="stable")[:5].tolist()
    assert top[0]["label"] in CIFAR10_NAMES


def test_ten_crop_is_the_mean_of_the_crop_logits(photos):
    keras.utils.set_random_seed(1)
    model = resnext_tf.build_resnext(50, cardinality=2, base_width=4, input_shape=(64, 64, 3))
    carried = contract.of_model(model).with_labels([f"c{i}" for i in range(1000)])
    predictor = predictors.KerasPredictor(model, carried, top_k=3, ten_crop=True)
    paths = good_paths(photos)[:2]
    items = [predictor.prepare(open(p, "rb").read()) for p in paths]
    assert items[0].shape == (10, 64, 64, 3)
    results = predictor.predict(items)
    cfg = DataConfig("imagenet", image_size=64, eval_resize=carried.eval_resize, ten_crop=True)
    for path, top in zip(paths, results, strict=True):
        crops = evaluation.imagenet_eval(tf.constant(open(path, "rb").read()), cfg)
        logits = model(crops, training=False).numpy().mean(axis=0)
        expected = tf.nn.softmax(logits).numpy()
        best = np.argsort(-expected, kind="stable")[:3]
        assert [p.index for p in top] == best.tolist()
        np.testing.assert_allclose([p.probability for p in top], expected[best], rtol=1e-4)
        assert [p.label for p in top] == [f"c{i}" for i in best]
    # Without ten crops: the export's one centre crop.
    single = predictors.KerasPredictor(model, carried, top_k=3)
    assert single.prepare(open(paths[0], "rb").read()).shape == (64, 64, 3)


def test_class_names_of_an_imagenet_folder_run(tmp_path):
    for wnid in ("n01443537", "n01440764", "my_own_class"):
        (tmp_path / "train" / wnid).mkdir(parents=True)
    # A run written before checkpoints recorded their contract: read from its configuration.
    state = {"num_classes": 3, "config": {"dataset": "imagenet", "data_dir": str(tmp_path)}}
    names = runs.data_contract(state)
    assert names.wnids == ("my_own_class", "n01440764", "n01443537")
    assert names.labels == ("my_own_class", "tench", "goldfish")
    # Trained on ImageNet without the folders at hand: the 1000 classes of the class index.
    state = {"num_classes": 1000, "config": {"dataset": "imagenet"}}
    assert runs.data_contract(state).labels[0] == "tench"
    state = {"num_classes": 3, "config": {"dataset": "imagenet"}}
    assert runs.data_contract(state).labels is None
    assert contract.dataset_classes("cifar100", 100)[0][:2] == ("apple", "aquarium_fish")
    labels = contract.dataset_classes("cifar100", 100)[0]
    assert len(labels) == 100 and len(set(labels)) == 100


class Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self._tty = tty

    def isatty(self):
        return self._tty


def test_progress_on_long_lists():
    stream = Stream(tty=False)
    progress = output.Progress(5, stream)
    progress.advance(5)
    assert stream.getvalue() == ""  # short list, not a terminal: silent
    progress = output.Progress(60, stream)
    for _ in range(60):
        progress.advance()
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1] == "predict: 60/60 images (100%)"
    tty = Stream(tty=True)
    progress = output.Progress(12, tty)
    progress.advance(12)
    progress.close()
    assert tty.getvalue() == "\rpredict: 12/12 images (100%)\n"


def test_export_refuses_a_model_without_three_channels(tmp_path):
    grey = resnext_tf.build_resnext(
        11, cardinality=2, base_width=4, stem="cifar", input_shape=(32, 32, 1)
    )
    with pytest.raises(ValueError, match=r"RGB and needs a 3-channel model.*1 input channels"):
        export.export_saved_model(grey, tmp_path, "grey", warmup=False)


# ----------------------------------------------------------------------------------------------
# --export: the float-input formats, float32 and INT8

FLOAT_INPUT = ("onnx", "openvino", "litert")


@pytest.fixture(scope="module")
def exported(run_model, tmp_path_factory):
    """{name: model base} of the run exported as ONNX, OpenVINO and LiteRT in float32."""
    base = tmp_path_factory.mktemp("exports")
    paths = {fmt: export.export_model(run_model, base, fmt, fmt=fmt) for fmt in FLOAT_INPUT}
    return {fmt: os.path.dirname(path) for fmt, path in paths.items()}


@pytest.mark.parametrize("fmt", FLOAT_INPUT)
def test_each_export_agrees_with_the_run(exported, run_dir, photos, fmt):
    _, from_run, _ = run_main(f"--model_dir={run_dir}", "--output_format=json", photos)
    code, out, err = run_main(f"--export={exported[fmt]}", "--output_format=json", photos)
    assert code == 1
    check_skipped_bad_file(err, photos)
    assert_same_predictions(out, from_run, fields=("index", "label"))


def test_an_int8_export_predicts_with_its_recorded_transform(run_model, photos, tmp_path):
    # Calibrated on the photo folder itself: its unreadable file is skipped and recorded.
    path = export.export_model(
        run_model, tmp_path, "int8", fmt="openvino", precision="int8", calibration_data=photos
    )
    with open(os.path.join(path, "export_info.json")) as f:
        info = json.load(f)
    assert info["calibration"]["skipped"] == 1 and info["calibration"]["kind"] == "image folder"
    assert info["calibration"]["images"] + info["agreement"]["images"] == len(GOOD)
    code, out, err = run_main(f"--export={path}", "--output_format=json", "--top_k=3", photos)
    assert code == 1
    check_skipped_bad_file(err, photos)
    rows = json.loads(out)
    assert [row["image"] for row in rows] == sorted(good_paths(photos))
    for row in rows:
        assert [p["rank"] for p in row["predictions"]] == [1, 2, 3]
        assert all(p["label"] in CIFAR10_NAMES for p in row["predictions"])


def test_export_flag_reads_a_saved_model_too(saved_model, photos):
    _, by_flag, _ = run_main(f"--saved_model={saved_model}", "--output_format=json", photos)
    code, out, _ = run_main(
        f"--export={os.path.dirname(saved_model)}", "--output_format=json", photos
    )
    assert code == 1 and json.loads(out) == json.loads(by_flag)


def _damage_info(folder, damage):
    info_path = os.path.join(folder, "export_info.json")
    if damage == "no_output":
        with open(info_path) as f:
            info = json.load(f)
        del info["output"]
        with open(info_path, "w") as f:
            json.dump(info, f)
        return
    os.remove(info_path)
    if damage == "fifo":
        os.mkfifo(info_path)  # opened plainly, the read would wait forever
    elif damage == "symlink":
        with open(os.path.join(folder, "elsewhere.json"), "w") as f:
            f.write("{}")
        os.symlink("elsewhere.json", info_path)
    elif damage == "huge":
        with open(info_path, "wb") as f:
            f.truncate(64 << 20)  # sparse: 64 MiB of zeros, never read whole


@pytest.mark.parametrize(
    "damage,match",
    [
        ("no_output", r"Cannot run the export .*: export_info.json lacks 'output'$"),
        ("fifo", r"Cannot read .*export_info.json: .*not a regular file"),
        ("symlink", r"Cannot read .*export_info.json: "),
        ("huge", r"Cannot read .*export_info.json: .*exceed the size limit 1048576"),
    ],
)
def test_a_damaged_export_info_is_one_line(damage, match, exported, photos, tmp_path):
    # export_info.json is outside input: read bounded, as a regular file, never through a link.
    folder = tmp_path / "onnx"
    shutil.copytree(exported["onnx"], folder)
    version = max(p for p in os.listdir(folder) if p.isdigit())
    _damage_info(os.path.join(folder, version), damage)
    code, out, err = run_main(f"--export={folder}", photos)
    assert code == EXIT_USER_ERROR and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(match, err.strip()), err


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--export={photos}"], r"holds no export: expected one of saved_model.pb, model.onnx"),
        (["--export={onnx}", "--num_classes=3"], r"--num_classes does not apply to --export"),
        (["--export={onnx}", "--ten_crop"], r"--ten_crop: ten_crop is an ImageNet evaluation"),
        (["--export={saved}", "--labels={photos}/notes.txt"], r"--labels does not apply"),
    ],
)
def test_export_user_errors_are_one_line(argv, match, exported, saved_model, photos):
    argv = [a.format(photos=photos, onnx=exported["onnx"], saved=saved_model) for a in argv]
    code, out, err = run_main(*argv, photos)
    assert code == EXIT_USER_ERROR and out == ""
    assert re.search(match, err.strip().splitlines()[-1]), err
