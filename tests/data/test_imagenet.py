"""ImageNet: folder index and its cache, quirky and broken files, and a prepared TFDS data_dir."""

import io
import logging
import os
import shutil
import tarfile
import zipfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from child_process import peak_growth
from image_samples import (
    WNIDS,
    encode,
    natural_image,
    numpy_color,
    train_image,
    with_jpeg_size,
)

from resnext_tf.data import (
    DataConfig,
    DataNotFoundError,
    build_dataset,
    dataset_spec,
    evaluation,
    imagenet,
    transforms,
)
from resnext_tf.data.config import ImageLimits

# Train files in index order (sorted wnid, then sorted name); see the imagenet_dir fixture.
TRAIN_FILES = (
    [f"{WNIDS[0]}/{WNIDS[0]}_{i}.JPEG" for i in (0, 1, 2, 3, 4, 9)]
    + [f"{WNIDS[1]}/{n}.JPEG" for n in ("cmyk", "grey")]
    + [f"{WNIDS[1]}/{WNIDS[1]}_{i}.JPEG" for i in range(5)]
    + [f"{WNIDS[1]}/png.JPEG"]
    + [f"{WNIDS[2]}/{WNIDS[2]}_{i}.JPEG" for i in (0, 1, 2, 3, 4, 9)]
)
TRUNCATED, EMPTY = 5, 19  # train indices of the broken files

# Crop area 1 with aspect 1 never fits a non-square image: the deterministic fallback.
DETERMINISTIC = dict(
    image_size=32,
    eval_resize=40,
    crop_area_range=(1.0, 1.0),
    aspect_range=(1.0, 1.0),
    color_jitter=0,
    lighting=0,
    flip=False,
)


def _collect(ds):
    images, labels = zip(*((x.numpy(), y.numpy()) for x, y in ds), strict=True)
    return np.concatenate(images), np.concatenate(labels)


def test_index_lists_files_with_sorted_wnid_labels(imagenet_dir):
    index = imagenet.load_file_index(str(imagenet_dir), "train", list(WNIDS))
    assert [p.decode() for p in index.relpaths] == TRAIN_FILES
    assert index.labels.tolist() == [0] * 6 + [1] * 8 + [2] * 6
    spec = dataset_spec(
        DataConfig("imagenet", data_dir=imagenet_dir, image_size=32, eval_resize=40)
    )
    assert spec == (3, 20, 7, (32, 32, 3))


def _small_tree(root, files_per_class=2):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for wnid in WNIDS[:2]:
            os.makedirs(root / split / wnid)
            for i in range(files_per_class):
                (root / split / wnid / f"{i}.JPEG").write_bytes(encode(natural_image(rng, 20, 30)))
    return str(root)


def test_index_is_cached_and_refreshed_when_a_folder_changes(tmp_path, monkeypatch, caplog):
    data_dir = _small_tree(tmp_path)
    with caplog.at_level(logging.INFO, logger="absl"):
        first = imagenet.load_file_index(data_dir, "train", list(WNIDS[:2]))
    assert "2/2 class folders, 4 images" in caplog.text
    assert len(os.listdir(tmp_path / ".resnext_tf_index")) == 1

    def no_scan(*args):
        raise AssertionError("listed the folders again")

    monkeypatch.setattr(imagenet, "_scan", no_scan)
    cached = imagenet.load_file_index(data_dir, "train", list(WNIDS[:2]))
    np.testing.assert_array_equal(cached.relpaths, first.relpaths)
    np.testing.assert_array_equal(cached.labels, first.labels)

    monkeypatch.undo()
    (cache_file,) = (tmp_path / ".resnext_tf_index").iterdir()
    cache_file.write_bytes(b"garbage")
    relisted = imagenet.load_file_index(data_dir, "train", list(WNIDS[:2]))
    np.testing.assert_array_equal(relisted.relpaths, first.relpaths)

    shutil.copy(
        tmp_path / "train" / WNIDS[0] / "0.JPEG", tmp_path / "train" / WNIDS[0] / "new.JPEG"
    )
    os.utime(tmp_path / "train" / WNIDS[0], ns=(1, 1))  # a distinct mtime even on coarse clocks
    refreshed = imagenet.load_file_index(data_dir, "train", list(WNIDS[:2]))
    assert len(refreshed.relpaths) == 5
    assert len(os.listdir(tmp_path / ".resnext_tf_index")) == 1  # the stale index is gone


def test_index_cache_goes_to_user_cache_when_data_dir_is_not_writable(tmp_path, monkeypatch):
    data_dir = _small_tree(tmp_path / "data")
    # A file where the cache folder should be makes the data_dir side unwritable, even as root.
    (tmp_path / "data" / ".resnext_tf_index").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    imagenet.load_file_index(data_dir, "eval", list(WNIDS[:2]))
    (folder,) = os.listdir(tmp_path / "cache" / "resnext_tf")
    assert [
        f.startswith("eval-") for f in os.listdir(tmp_path / "cache" / "resnext_tf" / folder)
    ] == [True]


def test_val_classes_must_be_train_classes(tmp_path):
    data_dir = _small_tree(tmp_path)
    os.makedirs(tmp_path / "val" / "n09999999")
    with pytest.raises(ValueError, match=r"\['n09999999'\].*subset of the 2 train/ classes"):
        imagenet.load_file_index(data_dir, "eval", list(WNIDS[:2]))


def test_missing_tfds_imagenet_says_how_to_get_it(tmp_path):
    with pytest.raises(
        DataNotFoundError, match="cannot be downloaded automatically.*DATA/val/<wnid>"
    ):
        dataset_spec(DataConfig("imagenet", data_dir=str(tmp_path)))


def test_eval_is_every_file_in_order_with_broken_ones_masked(imagenet_dir):
    cfg = DataConfig("imagenet", data_dir=imagenet_dir, **DETERMINISTIC)
    images, labels = _collect(build_dataset(cfg, "eval", 4))
    index = imagenet.load_file_index(str(imagenet_dir), "eval", list(WNIDS))
    files = [os.path.join(index.root, p.decode()) for p in index.relpaths]
    assert images.shape == (8, 32, 32, 3)
    # The truncated val file (last in file order) is masked like the padding.
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, -1, -1]
    for image, path in zip(images[:6], files[:6], strict=True):
        expected = evaluation.imagenet_eval(tf.io.read_file(path), cfg).numpy()
        np.testing.assert_allclose(image, expected, atol=1e-6)
    grey = (0.5 - np.array(transforms.IMAGENET_MEAN)) / transforms.IMAGENET_STD
    np.testing.assert_allclose(images[6], np.broadcast_to(grey, (32, 32, 3)), atol=1e-6)
    np.testing.assert_array_equal(images[7], 0)


def test_train_replaces_broken_files_by_the_next_file(imagenet_dir, capfd):
    cfg = DataConfig("imagenet", data_dir=imagenet_dir, **DETERMINISTIC)
    images, labels = _collect(build_dataset(cfg, "train", 20))
    root = os.path.join(str(imagenet_dir), "train")
    seed = tf.constant([0, 0], tf.int64)  # the deterministic config ignores the seed
    by_file = {
        name: train_image(tf.io.read_file(os.path.join(root, name)), seed, cfg)
        for i, name in enumerate(TRAIN_FILES)
        if i not in (TRUNCATED, EMPTY)
    }
    sources = []
    for image in images:
        (match,) = [n for n, ref in by_file.items() if np.allclose(image, ref, atol=1e-5)]
        sources.append(match)
    expected = sorted(by_file) + [TRAIN_FILES[TRUNCATED + 1], TRAIN_FILES[0]]
    assert sorted(sources) == sorted(expected)
    label_of = {name: WNIDS.index(name.split("/")[0]) for name in TRAIN_FILES}
    assert sorted(labels.tolist()) == sorted(label_of[n] for n in sources)
    warnings = capfd.readouterr().err
    for broken, replacement in ((TRUNCATED, TRUNCATED + 1), (EMPTY, 0)):
        assert (
            f'unreadable image "{os.path.join(root, TRAIN_FILES[broken])}" replaced by' in warnings
        )
        assert TRAIN_FILES[replacement] in warnings


def _broken_tree(root):
    """8 train files in 2 classes, of which 2 (empty) and 3 (truncated) are unreadable;
    val: one good file, then two broken ones."""
    rng = np.random.default_rng(8)
    good = [encode(natural_image(rng, 40 + 3 * i, 56), quality=90) for i in range(9)]
    contents = good[:2] + [b"", good[2][:300]] + good[3:7]
    paths = []
    for i, data in enumerate(contents):
        paths.append(root / "train" / WNIDS[i // 4] / f"{i}.JPEG")
        os.makedirs(paths[-1].parent, exist_ok=True)
        paths[-1].write_bytes(data)
    os.makedirs(root / "val" / WNIDS[0])
    for name, data in (("a", good[7]), ("b", b"not a jpeg"), ("c", good[8][:200])):
        (root / "val" / WNIDS[0] / f"{name}.JPEG").write_bytes(data)
    return [str(p) for p in paths], {2, 3}


def _reference_example(paths, broken, i, seed, cfg):
    """Example i of a training epoch, computed image by image: the first readable of files
    i and i + 1 through crop, resize and flip, then fb.resnet's color steps one after the
    other in NumPy; a normalized grey image when neither file reads."""
    for j in (i, (i + 1) % len(paths)):
        if j not in broken:
            break
    else:
        grey = (0.5 - np.array(transforms.IMAGENET_MEAN)) / transforms.IMAGENET_STD
        return np.broadcast_to(grey, (32, 32, 3)), i // 4
    image, _ = transforms.imagenet_train(tf.io.read_file(paths[j]), seed, cfg)
    _, jitter_seed, light_seed, _ = transforms.split_seed(seed, 4)
    factors, order = transforms.sample_color_jitter(jitter_seed, 0.4)
    alpha = tf.random.stateless_normal([3], light_seed, stddev=0.1).numpy()
    shift = np.array(transforms.PCA_EIGVEC) @ (alpha * np.array(transforms.PCA_EIGVAL))
    expected, _ = numpy_color(image.numpy().astype(np.float64), factors.numpy(), order, shift)
    return expected, j // 4


def test_train_batches_equal_a_per_image_reference(tmp_path, capfd):
    paths, broken = _broken_tree(tmp_path)
    cfg = DataConfig("imagenet", data_dir=tmp_path, image_size=32, eval_resize=40, seed=3)
    ds = build_dataset(cfg, "train", 4, epoch=1)
    assert ds.element_spec[0].shape == (4, 32, 32, 3) and ds.element_spec[1].shape == (4,)
    images, labels = _collect(ds)
    # Position t holds example index_shuffle(t), its draws seeded by fold_in(., index)
    # (docs/data.md "Determinism and resume").
    shuffle_seed, augment_seed = transforms.split_seed(tf.constant([3, 1], tf.int64), 2)
    for t in range(8):
        i = int(tf.random.experimental.index_shuffle(t, shuffle_seed, 7))
        seed = tf.random.experimental.stateless_fold_in(augment_seed, tf.constant(i, tf.int64))
        expected, label = _reference_example(paths, broken, i, seed, cfg)
        np.testing.assert_allclose(images[t], expected, atol=2e-5)
        assert labels[t] == label
    warnings = capfd.readouterr().err
    assert f'unreadable image "{paths[2]}" replaced by a grey image' in warnings
    assert f'unreadable image "{paths[3]}" replaced by "{paths[4]}"' in warnings
    resumed, _ = _collect(build_dataset(cfg, "train", 4, epoch=1, skip_batches=1))
    np.testing.assert_array_equal(resumed, images[4:])
    for part in (0, 1):
        context = tf.distribute.InputContext(2, part, 2)
        shard, _ = _collect(build_dataset(cfg, "train", 4, context, epoch=1))
        halves = images.reshape(2, 4, 32, 32, 3)[:, 2 * part : 2 * part + 2]
        np.testing.assert_allclose(shard, halves.reshape(4, 32, 32, 3), atol=1e-6)


def test_eval_batch_whose_files_all_fail_is_masked(tmp_path):
    _broken_tree(tmp_path)
    cfg = DataConfig("imagenet", data_dir=tmp_path, **DETERMINISTIC)
    images, labels = _collect(build_dataset(cfg, "eval", 2))
    assert labels.tolist() == [0, -1, -1, -1]
    grey = (0.5 - np.array(transforms.IMAGENET_MEAN)) / transforms.IMAGENET_STD
    np.testing.assert_allclose(images[1:3], np.broadcast_to(grey, (2, 32, 32, 3)), atol=1e-6)
    np.testing.assert_array_equal(images[3], 0)


def test_images_over_the_limits_are_replaced_like_unreadable_ones(tmp_path, capfd):
    # A decompression bomb (a 20000 x 20000 header in a small file) and a 1 x 3000 strip are
    # refused from their headers, undecoded, and replaced with a warning naming them and why.
    rng = np.random.default_rng(10)
    good = [encode(natural_image(rng, 40 + 4 * i, 56), quality=90) for i in range(4)]
    contents = [
        good[0],
        with_jpeg_size(good[0], 20000, 20000),
        good[1],
        encode(natural_image(rng, 1, 3000)),
        good[2],
        good[3][:200],
    ]
    paths = []
    for i, data in enumerate(contents):
        paths.append(tmp_path / "train" / WNIDS[i // 3] / f"{i}.JPEG")
        os.makedirs(paths[-1].parent, exist_ok=True)
        paths[-1].write_bytes(data)
    os.makedirs(tmp_path / "val" / WNIDS[0])
    (tmp_path / "val" / WNIDS[0] / "bomb.JPEG").write_bytes(contents[1])
    cfg = DataConfig("imagenet", data_dir=tmp_path, **DETERMINISTIC)
    images, labels = _collect(build_dataset(cfg, "train", 6))
    assert images.shape == (6, 32, 32, 3) and np.isfinite(images).all()
    warnings = capfd.readouterr().err
    for broken, replacement, reason in [
        (1, 2, "20000x20000 pixels exceed the pixel limit 89478485"),
        (3, 4, "3000x1 pixels exceed the aspect-ratio limit 50"),
        (5, 0, "cannot be read or decoded"),
    ]:
        line = f'unreadable image "{paths[broken]}" replaced by "{paths[replacement]}": {reason}'
        assert line in warnings
    _, labels = _collect(build_dataset(cfg, "eval", 1))
    assert labels.tolist() == [-1]
    bomb = tmp_path / "val" / WNIDS[0] / "bomb.JPEG"
    assert f'"{bomb}" replaced by a grey image: 20000x20000 pixels exceed' in capfd.readouterr().err


def test_quirky_files_decode_through_the_pipeline(imagenet_dir):
    # CMYK, PNG-named-.JPEG and grey files give finite images in both crop modes.
    for fused in (True, False):
        cfg = DataConfig("imagenet", data_dir=imagenet_dir, image_size=32, fused_crop=fused)
        images, labels = _collect(build_dataset(cfg, "train", 10, epoch=3))
        assert images.shape == (20, 32, 32, 3) and np.isfinite(images).all()
        assert np.abs(images).max() < 10  # normalized, jittered values stay moderate


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def tfds_imagenet(tmp_path_factory):
    """A real TFDS imagenet2012 prepared from tiny ILSVRC2012 tars: 2 x 6 train, 5 val."""
    root = tmp_path_factory.mktemp("tfds_imagenet")
    rng = np.random.default_rng(0)
    with tarfile.open(root / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid in WNIDS[:2]:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for i in range(6):
                    _add(tar, f"{wnid}_{i}.JPEG", encode(natural_image(rng, 80, 100), quality=90))
            _add(outer, f"{wnid}.tar", inner.getvalue())
    with tarfile.open(root / "ILSVRC2012_img_val.tar", "w") as tar:
        for i in range(1, 6):
            _add(
                tar, f"ILSVRC2012_val_{i:08d}.JPEG", encode(natural_image(rng, 90, 70), quality=90)
            )
    builder = tfds.builder("imagenet2012", data_dir=str(root / "tfds"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    return str(root / "tfds")


@pytest.mark.slow
def test_tfds_imagenet_epochs_resume_and_eval(tfds_imagenet):
    cfg = DataConfig("imagenet", data_dir=tfds_imagenet, image_size=32, eval_resize=40)
    assert dataset_spec(cfg) == (1000, 12, 5, (32, 32, 3))
    images, labels = _collect(build_dataset(cfg, "train", 4))
    assert images.shape == (12, 32, 32, 3) and np.isfinite(images).all()
    # Each of the 12 records once: 6 per class (labels are positions in TFDS's sorted wnids).
    assert np.bincount(labels).tolist()[-1] == 6 and len(set(labels.tolist())) == 2
    again, _ = _collect(build_dataset(cfg, "train", 4))
    resumed, _ = _collect(build_dataset(cfg, "train", 4, skip_batches=2))
    other_epoch, _ = _collect(build_dataset(cfg, "train", 4, epoch=1))
    np.testing.assert_array_equal(again, images)
    np.testing.assert_array_equal(resumed, images[8:])
    assert not np.allclose(other_epoch, images)
    eval_images, eval_labels = _collect(build_dataset(cfg, "eval", 2))
    assert eval_images.shape == (6, 32, 32, 3)
    # TFDS labels val images from its bundled list, whose first five entries are these.
    names = tfds.builder("imagenet2012", data_dir=tfds_imagenet).info.features["label"].names
    first_five = ["n01751748", "n09193705", "n02105855", "n04263257", "n03125729"]
    assert sorted(names[i] for i in eval_labels[:5]) == sorted(first_five)
    assert eval_labels[5] == -1


def _huge_shape(path):
    # relpaths.npy whose header declares 2**40 paths of 40 bytes, holding one: np.load would
    # allocate 40 TiB from the header alone.
    header = b"{'descr': '|S40', 'fortran_order': False, 'shape': (1099511627776,), }"
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"x" * 40
    with zipfile.ZipFile(f"{path}.npz", "w") as archive:
        archive.writestr("relpaths.npy", npy)
        with archive.open("labels.npy", "w") as f:
            np.save(f, np.array([0]))


def _planted(relpaths, labels, pickled=False):
    def write(path):
        if pickled:  # an object array: np.save pickles it
            np.savez(path, relpaths=np.array([{"x": 1}], dtype=object), labels=labels)
        else:
            np.savez(path, relpaths=relpaths, labels=labels)

    return write


@pytest.mark.parametrize(
    "plant, reason",
    [
        (_planted(np.array([b"../../etc/passwd", b"x/y"]), np.array([0, 1])), "not <wnid>/<file>"),
        (_planted(np.array([b"/etc/passwd", b"x/y"]), np.array([0, 1])), "not <wnid>/<file>"),
        (_planted(np.array([f"{WNIDS[0]}/0.JPEG".encode()]), np.array([7])), "labels outside"),
        (_planted(None, np.array([0]), pickled=True), "pickled"),
        (_huge_shape, "relpaths.npy declares shape (1099511627776,) of |S40, more than it holds"),
    ],
    ids=["parent-path", "absolute-path", "label-range", "pickled-objects", "huge-shape"],
)
def test_a_planted_index_is_refused_and_the_folders_listed_again(tmp_path, caplog, plant, reason):
    # The cache sits inside the dataset's folder, which may come from anyone: a crafted index
    # must not point the pipeline outside the class folders, carry bad labels or unpickle.
    data_dir = _small_tree(tmp_path)
    first = imagenet.load_file_index(data_dir, "train", list(WNIDS[:2]))
    (cache_file,) = (tmp_path / ".resnext_tf_index").iterdir()
    plant(str(cache_file)[: -len(".npz")])  # np.savez appends .npz
    with caplog.at_level(logging.WARNING, logger="absl"):
        again = imagenet.load_file_index(data_dir, "train", list(WNIDS[:2]))
    assert "Ignoring the image index" in caplog.text
    assert reason in caplog.text or reason == "pickled"
    np.testing.assert_array_equal(again.relpaths, first.relpaths)
    np.testing.assert_array_equal(again.labels, first.labels)


def test_an_index_over_the_size_limit_is_not_loaded(tmp_path, monkeypatch, caplog):
    data_dir = _small_tree(tmp_path)
    first = imagenet.load_file_index(data_dir, "train", list(WNIDS[:2]))
    monkeypatch.setattr(imagenet, "MAX_INDEX_BYTES", 64)
    with caplog.at_level(logging.WARNING, logger="absl"):
        again = imagenet.load_file_index(data_dir, "train", list(WNIDS[:2]))
    assert "over the 64-byte limit" in caplog.text
    np.testing.assert_array_equal(again.relpaths, first.relpaths)


def test_image_limits_of_the_data_config_apply_to_training(tmp_path, capfd):
    # The limits come from DataConfig (run_imagenet.py --max_image_pixels etc.), not only the
    # defaults: a tighter pixel limit replaces an ordinary 48x56 image.
    rng = np.random.default_rng(11)
    small, large = encode(natural_image(rng, 32, 32)), encode(natural_image(rng, 48, 56))
    for i, data in enumerate([small, large, small]):
        os.makedirs(tmp_path / "train" / WNIDS[0], exist_ok=True)
        (tmp_path / "train" / WNIDS[0] / f"{i}.JPEG").write_bytes(data)
    cfg = DataConfig(
        "imagenet", data_dir=tmp_path, image_limits=ImageLimits(max_pixels=32 * 32), **DETERMINISTIC
    )
    _collect(build_dataset(cfg, "train", 3))
    large_path = tmp_path / "train" / WNIDS[0] / "1.JPEG"
    replaced = f'"{large_path}" replaced by "{tmp_path / "train" / WNIDS[0] / "2.JPEG"}"'
    assert f"{replaced}: 56x48 pixels exceed the pixel limit 1024" in capfd.readouterr().err


def test_a_file_that_is_not_a_regular_file_is_replaced_with_the_reason(tmp_path, capfd):
    # A directory named like an image, listed by a planted index: refused from its type.
    data_dir = _small_tree(tmp_path, files_per_class=1)
    index = imagenet.load_file_index(data_dir, "train", list(WNIDS[:2]))
    os.makedirs(tmp_path / "train" / WNIDS[0] / "dir.JPEG")
    name = f"train-{imagenet._index_key(tmp_path / 'train', list(WNIDS[:2]), list(WNIDS[:2]))}"
    relpaths = np.array(sorted([*index.relpaths, f"{WNIDS[0]}/dir.JPEG".encode()]))
    np.savez(tmp_path / ".resnext_tf_index" / name, relpaths=relpaths, labels=np.array([0, 0, 1]))
    cfg = DataConfig("imagenet", data_dir=tmp_path, **DETERMINISTIC)
    images, _ = _collect(build_dataset(cfg, "train", 3))
    assert images.shape == (3, 32, 32, 3)
    directory = tmp_path / "train" / WNIDS[0] / "dir.JPEG"
    next_file = tmp_path / "train" / WNIDS[1] / "0.JPEG"
    line = f'"{directory}" replaced by "{next_file}": is not a regular file\n'
    assert line in capfd.readouterr().err


def test_a_huge_file_and_a_fifo_are_replaced_unread(tmp_path):
    # tf.io.read_file read a 1 GiB file whole before its size was checked (+1 GiB), and blocked
    # forever on a FIFO that a planted index names. Both are refused from the open file; the
    # epoch goes on. In a child process: its peak memory is its own, and a hang meets a timeout.
    data_dir = _small_tree(tmp_path, files_per_class=2)
    index = imagenet.load_file_index(data_dir, "train", list(WNIDS[:2]))
    folder = tmp_path / "train" / WNIDS[0]
    with open(folder / "1.JPEG", "r+b") as f:  # sparse: no disk space, but read as zeros
        f.truncate(2**30)
    os.remove(folder / "0.JPEG")
    os.mkfifo(folder / "0.JPEG")  # a listing skips it; the planted index names it
    name = f"train-{imagenet._index_key(tmp_path / 'train', list(WNIDS[:2]), list(WNIDS[:2]))}"
    np.savez(tmp_path / ".resnext_tf_index" / name, relpaths=index.relpaths, labels=index.labels)
    growth, error, stderr = peak_growth(
        "from resnext_tf.data import DataConfig, build_dataset\n"
        f"cfg = DataConfig('imagenet', data_dir={str(tmp_path)!r}, image_size=32)\n"
        "list(build_dataset(cfg, 'eval', 4))  # TensorFlow and the pipeline's graphs, loaded",
        "assert sum(len(labels) for _, labels in build_dataset(cfg, 'train', 4)) == 4",
        package_init=True,
        timeout=180,
    )
    assert error == ""
    assert f'"{folder / "0.JPEG"}" replaced by' in stderr
    assert f'"{folder / "1.JPEG"}" replaced by' in stderr
    assert ": is not a regular file" in stderr
    assert ": 1073741824 bytes exceed the size limit 67108864" in stderr
    assert growth < 256


def test_train_config_image_limits_reach_the_pipeline():
    from resnext_tf.training import TrainConfig

    config = TrainConfig(dataset="imagenet", max_image_pixels=1000, max_image_aspect=3.5)
    limits = config.data_config.image_limits
    assert limits == ImageLimits(1000, 3.5, ImageLimits().max_bytes)
    assert TrainConfig(dataset="imagenet").data_config.image_limits == ImageLimits()
    with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
        TrainConfig(dataset="imagenet", max_image_pixels=0)
