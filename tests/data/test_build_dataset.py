"""build_dataset: epoch order, determinism, resume, sharding, padding, synthetic data, errors."""

import numpy as np
import pytest
import tensorflow as tf

from resnext_tf.data import DataConfig, build_dataset, dataset_spec

CIFAR10_MEAN, CIFAR10_STD = np.array([125.3, 123.0, 113.9]), np.array([63.0, 62.1, 66.7])


def _collect(ds):
    images, labels = zip(*((x.numpy(), y.numpy()) for x, y in ds), strict=True)
    return np.stack(images), np.stack(labels)


def _context(pipelines, pipeline_id, replicas):
    return tf.distribute.InputContext(
        num_input_pipelines=pipelines, input_pipeline_id=pipeline_id, num_replicas_in_sync=replicas
    )


@pytest.fixture(scope="module")
def cfg(cifar10_dir):
    return DataConfig("cifar10", data_dir=cifar10_dir[0])


@pytest.fixture(scope="module")
def epoch0(cfg):
    """Epoch 0 of the 60-image train split in global batches of 8: 7 batches."""
    return _collect(build_dataset(cfg, "train", 8))


def test_train_epoch_shape_and_static_spec(cfg, epoch0):
    ds = build_dataset(cfg, "train", 8)
    images_spec, labels_spec = ds.element_spec
    assert images_spec.shape == (8, 32, 32, 3) and images_spec.dtype == tf.float32
    assert labels_spec.shape == (8,) and labels_spec.dtype == tf.int32
    assert len(ds) == 7 and epoch0[0].shape == (7, 8, 32, 32, 3)


def test_same_seed_and_epoch_give_identical_batches(cfg, epoch0):
    images, labels = _collect(build_dataset(cfg, "train", 8))
    np.testing.assert_array_equal(images, epoch0[0])
    np.testing.assert_array_equal(labels, epoch0[1])


@pytest.mark.parametrize("change", [dict(seed=1), dict(epoch=1)])
def test_other_seed_or_epoch_gives_other_batches(cfg, epoch0, change):
    seed_cfg = DataConfig("cifar10", data_dir=cfg.data_dir, seed=change.get("seed", 0))
    images, labels = _collect(build_dataset(seed_cfg, "train", 8, epoch=change.get("epoch", 0)))
    assert not np.array_equal(labels, epoch0[1])
    assert np.abs(images - epoch0[0]).mean() > 0.1


def test_skip_batches_resumes_mid_epoch(cfg, epoch0):
    images, labels = _collect(build_dataset(cfg, "train", 8, skip_batches=3))
    np.testing.assert_array_equal(images, epoch0[0][3:])
    np.testing.assert_array_equal(labels, epoch0[1][3:])
    assert len(build_dataset(cfg, "train", 8, skip_batches=7)) == 0


def _example_ids(images, train_images):
    """Index of each normalized, unaugmented image in the train set."""
    normalized = (train_images - CIFAR10_MEAN) / CIFAR10_STD
    flat = normalized.reshape(len(normalized), -1)
    return [int(np.argmin(np.abs(flat - image.reshape(1, -1)).max(1))) for image in images]


def test_epoch_visits_examples_at_most_once_in_a_new_order_each_epoch(cifar10_dir):
    root, (train_images, _), _ = cifar10_dir
    plain = DataConfig("cifar10", data_dir=root, flip=False, pad_crop=0)
    orders = []
    for epoch in (0, 1):
        images, _ = _collect(build_dataset(plain, "train", 8, epoch=epoch))
        ids = _example_ids(images.reshape(-1, 32, 32, 3), train_images)
        np.testing.assert_allclose(
            images.reshape(-1, 32, 32, 3),
            (train_images[ids] - CIFAR10_MEAN) / CIFAR10_STD,
            atol=1e-5,
        )
        assert len(set(ids)) == 56
        orders.append(ids)
    assert orders[0] != orders[1]


def test_augmentation_depends_on_the_example_not_on_the_batch_size(cfg, epoch0):
    # Positions 0..55 hold the same examples for any batch size, with the same draws.
    images, _ = _collect(build_dataset(cfg, "train", 4))
    np.testing.assert_array_equal(
        images.reshape(-1, 32, 32, 3)[:56], epoch0[0].reshape(-1, 32, 32, 3)
    )


def test_two_pipelines_split_each_global_batch(cfg, epoch0):
    shards = [_collect(build_dataset(cfg, "train", 8, _context(2, p, 2))) for p in (0, 1)]
    for part, (images, labels) in enumerate(shards):
        assert images.shape == (7, 4, 32, 32, 3)
        np.testing.assert_array_equal(images, epoch0[0][:, 4 * part : 4 * part + 4])
        np.testing.assert_array_equal(labels, epoch0[1][:, 4 * part : 4 * part + 4])


def test_one_pipeline_feeds_its_replicas_in_turn(cfg, epoch0):
    images, _ = _collect(build_dataset(cfg, "train", 8, _context(1, 0, 2), skip_batches=1))
    assert images.shape == (12, 4, 32, 32, 3)
    np.testing.assert_array_equal(images.reshape(6, 8, 32, 32, 3), epoch0[0][1:])


def test_sharded_eval_covers_every_example_once(cifar10_dir, cfg):
    _, _, (_, test_labels) = cifar10_dir
    shards = [_collect(build_dataset(cfg, "eval", 8, _context(2, p, 4))) for p in (0, 1)]
    # 20 images, global batch 8 (2 per replica): 3 steps, positions 0-3 of a step to pipeline 0.
    labels = np.stack([s[1].reshape(3, 4) for s in shards], axis=1).reshape(-1)
    np.testing.assert_array_equal(labels, np.concatenate([test_labels, [-1] * 4]))
    assert all(s[0].shape == (6, 2, 32, 32, 3) for s in shards)


def test_eval_cache_gives_the_same_batches(cfg):
    cached = build_dataset(DataConfig("cifar10", data_dir=cfg.data_dir, cache=True), "eval", 8)
    first, second = _collect(cached), _collect(cached)
    plain = _collect(build_dataset(cfg, "eval", 8))
    for run in (first, second):
        np.testing.assert_array_equal(run[0], plain[0])
        np.testing.assert_array_equal(run[1], plain[1])


def test_ten_crop_eval_shape(imagenet_dir):
    cfg = DataConfig(
        "imagenet", data_dir=imagenet_dir, image_size=24, eval_resize=28, ten_crop=True
    )
    ds = build_dataset(cfg, "eval", 4)
    assert ds.element_spec[0].shape == (4, 10, 24, 24, 3)
    images, labels = next(iter(ds))
    np.testing.assert_allclose(
        images[:, 5:].numpy(), images[:, :5].numpy()[:, :, :, ::-1], atol=1e-6
    )


def test_synthetic_counts_shapes_and_padding():
    cfg = DataConfig("imagenet", data_dir="synthetic", image_size=16)
    assert dataset_spec(cfg) == (1000, 1281167, 50000, (16, 16, 3))
    train = build_dataset(cfg, "train", 256)
    assert len(train) == 1281167 // 256 and train.element_spec[0].shape == (256, 16, 16, 3)
    first, second = list(train.take(2))
    np.testing.assert_array_equal(first[0], second[0])  # one batch, generated once
    assert first[1].numpy().min() >= 0 and first[1].numpy().max() < 1000
    evaluation = build_dataset(cfg, "eval", 4096, _context(2, 1, 2), skip_batches=12)
    # 50000 = 12 * 4096 + 848: pipeline 1 holds positions 2048-4095 of the last step.
    (last,) = list(evaluation)
    assert last[0].shape == (2048, 16, 16, 3) and (last[1].numpy() == -1).all()
    ten = build_dataset(DataConfig("imagenet", data_dir="synthetic", ten_crop=True), "eval", 2)
    assert ten.element_spec[0].shape == (2, 10, 224, 224, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(split="test", global_batch_size=8), "split='test'"),
        (
            dict(split="train", global_batch_size=6, input_context=_context(1, 0, 4)),
            "num_replicas_in_sync=4",
        ),
        (
            dict(split="train", global_batch_size=6, input_context=_context(2, 0, 3)),
            "num_input_pipelines=2",
        ),
        (dict(split="train", global_batch_size=8, skip_batches=8), r"\[0, 7\].*skip_batches=8"),
        (dict(split="train", global_batch_size=61), "has 60 examples"),
    ],
)
def test_bad_arguments_are_rejected(cfg, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_dataset(cfg, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dataset="mnist"), "dataset='mnist'"),
        (dict(dataset="cifar10", image_size=64), "image_size=64"),
        (dict(dataset="cifar100", ten_crop=True), "dataset='cifar100'"),
        (dict(dataset="imagenet", crop_area_range=(0.5, 0.1)), "crop_area_range"),
        (dict(dataset="imagenet", image_size=300, eval_resize=256), "eval_resize=256"),
        (dict(dataset="imagenet", lighting=-1), "lighting=-1"),
    ],
)
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**kwargs)
