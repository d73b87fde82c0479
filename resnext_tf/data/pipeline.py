"""Assembles the tf.data pipelines: epoch order, sharding, resume, robust decoding, batching.

An epoch is a sequence of positions 0 .. steps * global_batch - 1; step s holds positions
s * B .. s * B + B - 1, and an input pipeline feeds the contiguous slice of each step that its
replicas consume. Training maps position -> example index with a stateless permutation of
(seed, epoch); evaluation uses file order. The augmentation draws of an example are seeded
with fold_in(augmentation seed of (seed, epoch), example index), so a batch depends on nothing
but (seed, epoch, step). TFRecord sources cannot be indexed: they are shuffled by file and in
windows, and seeded by (pipeline, position in the pipeline's stream) instead.
"""

import dataclasses
import functools
import hashlib
import os

import tensorflow as tf

from resnext_tf.data import decode, evaluation, transforms, unreadable
from resnext_tf.data.cifar import CifarArrays
from resnext_tf.data.config import SPLITS, DataConfig
from resnext_tf.data.imagenet import FileIndex
from resnext_tf.data.sources import SyntheticSplit, load_source

AUTOTUNE = tf.data.AUTOTUNE
# Streamed (TFRecord) sources are shuffled in windows of this many records.
SHUFFLE_WINDOW = 8192
# Grey level, in [0, 1], of the image standing in for an example no file of which decodes.
GREY = 0.5


@dataclasses.dataclass(frozen=True)
class _BatchSplit:
    """How a global batch is split: this pipeline feeds `width` examples per step from
    position `offset` of the step, as width / batch per-replica batches."""

    global_batch: int
    batch: int
    width: int
    offset: int

    def local_count(self, num_examples, steps, skip):
        """How many of this pipeline's positions in steps skip..steps-1 are < num_examples."""
        step_starts = range(
            skip * self.global_batch + self.offset, steps * self.global_batch, self.global_batch
        )
        return sum(min(max(num_examples - start, 0), self.width) for start in step_starts)


def _batch_split(global_batch_size, input_context):
    replicas, pipelines, pipeline_id = 1, 1, 0
    if input_context is not None:
        replicas = input_context.num_replicas_in_sync
        pipelines = input_context.num_input_pipelines
        pipeline_id = input_context.input_pipeline_id
    if global_batch_size < 1 or global_batch_size % replicas:
        raise ValueError(
            f"global_batch_size must be a positive multiple of num_replicas_in_sync; received "
            f"global_batch_size={global_batch_size}, num_replicas_in_sync={replicas}."
        )
    if replicas % pipelines:
        raise ValueError(
            f"num_replicas_in_sync must be a multiple of num_input_pipelines; received "
            f"num_replicas_in_sync={replicas}, num_input_pipelines={pipelines}."
        )
    width = global_batch_size // pipelines
    return _BatchSplit(global_batch_size, global_batch_size // replicas, width, pipeline_id * width)


def _epoch_seeds(seed, epoch):
    """Returns the (shuffle, augmentation) seeds of an epoch."""
    return transforms.split_seed(tf.constant([seed, epoch], tf.int64), 2)


def _example_shape(config, train):
    size = config.crop_size
    return [10, size, size, 3] if config.ten_crop and not train else [size, size, 3]


def _standin(config, train):
    """What an example none of whose files decodes becomes: a mid-grey image, left as it is
    by the color map in training."""
    if train:
        grey = tf.fill(_example_shape(config, train), 255.0 * GREY)
        neutral = transforms.color_map(
            tf.fill([3], 255.0 * GREY), tf.constant(transforms.NO_JITTER), tf.zeros([3])
        )
        return grey, neutral
    grey = tf.fill(_example_shape(config, train), GREY)
    return transforms.normalize(grey, transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)


def _imagenet_transform(config, train):
    if train:
        return lambda data, seed: transforms.imagenet_train(data, seed, config, config.image_limits)
    return lambda data, seed: evaluation.imagenet_eval(data, config, config.image_limits)


def _positions(batching, start, stop):
    """This pipeline's epoch positions, for its local slots start .. stop - 1."""
    width, batch, offset = batching.width, batching.global_batch, batching.offset
    return tf.data.Dataset.range(start, stop).map(lambda t: t // width * batch + offset + t % width)


def _cifar_examples(ds, arrays, config, train):
    images, labels = tf.constant(arrays.images), tf.constant(arrays.labels)

    def example(index, seed):
        image = tf.gather(images, index)
        image = (
            transforms.cifar_train(image, seed, config)
            if train
            else transforms.cifar_eval(image, config.dataset)
        )
        return image, tf.gather(labels, index)

    return ds.map(example, num_parallel_calls=AUTOTUNE, deterministic=True)


def _file_candidates(ds, index, train):
    paths, labels = tf.constant(index.relpaths), tf.constant(index.labels)
    prefix = os.path.join(index.root, "")
    count = index.num_examples

    def candidates(i, seed):
        # An unreadable training image is replaced by the next file in file order.
        ids = tf.stack([i, (i + 1) % count]) if train else i[None]
        files = prefix + tf.gather(paths, ids)
        return seed, files, files, tf.gather(labels, ids)

    return ds.map(candidates, num_parallel_calls=AUTOTUNE, deterministic=True)


def _indexed_examples(config, data, train, batching, start, count, epoch):
    """Examples of an in-memory or file source, read by index in epoch order: CIFAR
    (image, label) pairs, or the candidates of _decode_batches."""
    shuffle_seed, augment_seed = _epoch_seeds(config.seed, epoch)
    ds = _positions(batching, start, start + count)
    if train:
        last = tf.constant(data.num_examples - 1, tf.int64)
        ds = ds.map(lambda pos: tf.random.experimental.index_shuffle(pos, shuffle_seed, last))
    ds = ds.map(lambda i: (i, tf.random.experimental.stateless_fold_in(augment_seed, i)))
    if isinstance(data, CifarArrays):
        return _cifar_examples(ds, data, config, train)
    return _file_candidates(ds, data, train)


def _python_seed(seed, epoch):
    return int(hashlib.sha1(f"{seed}:{epoch}".encode()).hexdigest()[:8], 16)


def _window_shuffle(ds, seed):
    """Stateless shuffle of a stream: each window of SHUFFLE_WINDOW records is permuted."""

    def shuffle(window_id, window):
        size = tf.shape(window[1])[0]
        window_seed = tf.random.experimental.stateless_fold_in(seed, window_id)
        order = tf.random.experimental.stateless_shuffle(tf.range(size), window_seed)
        return tf.nest.map_structure(lambda t: tf.gather(t, order), window)

    return ds.batch(SHUFFLE_WINDOW).enumerate().map(shuffle).unbatch()


def _streamed_examples(config, data, train, batching, start, count, epoch, input_context):
    """Candidates (of _decode_batches) of a TFDS imagenet2012 (TFRecords).

    Training shards by file (TFDS input_context) and cycles a pipeline's files to fill exactly
    `count` examples; evaluation reads the split in order and keeps this pipeline's positions.
    """
    import tensorflow_datasets as tfds  # slow import, only when TFDS is the source

    shuffle_seed, augment_seed = _epoch_seeds(config.seed, epoch)
    read = functools.partial(
        data.builder.as_dataset,
        split=data.name,
        as_supervised=True,
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    if train:
        read_config = tfds.ReadConfig(
            shuffle_seed=_python_seed(config.seed, epoch), input_context=input_context
        )
        ds = _window_shuffle(read(shuffle_files=True, read_config=read_config), shuffle_seed)
        ds = ds.repeat()
        ds = ds.enumerate().skip(start).take(count)
    else:
        batch, offset, width = batching.global_batch, batching.offset, batching.width
        ds = read(shuffle_files=False).enumerate()
        ds = ds.filter(
            lambda pos, _: (
                (pos % batch >= offset)
                & (pos % batch < offset + width)
                & (pos >= start // width * batch)
            )
        )
    key = tf.random.experimental.stateless_fold_in(augment_seed, batching.offset)

    def candidates(pos, record):
        name = tf.strings.format("{} record {}", (data.name, pos))
        data_bytes, label = record
        seed = tf.random.experimental.stateless_fold_in(key, pos)
        return seed, name[None], data_bytes[None], tf.cast(label, tf.int32)[None]

    return ds.map(candidates)


def _synthetic(config, num_classes, batching, steps, skip, num_examples, train):
    """The same random batch every step, labels beyond the split's size set to -1."""
    images = tf.random.stateless_normal(
        [batching.batch, *_example_shape(config, train)], [config.seed, 0]
    )
    labels = tf.random.stateless_uniform(
        [batching.batch], [config.seed, 1], 0, num_classes, tf.int32
    )
    per_step = batching.width // batching.batch

    def batch(t):
        first = (
            (skip + t // per_step) * batching.global_batch
            + batching.offset
            + t % per_step * batching.batch
        )
        positions = first + tf.range(batching.batch, dtype=tf.int64)
        return images, tf.where(positions < num_examples, labels, -1)

    return tf.data.Dataset.range((steps - skip) * per_step).map(batch)


def _batches(config, data, train, batching, start, count, epoch, input_context):
    """Batches of this pipeline's `count` examples from local slot `start` (train: all whole)."""
    if isinstance(data, CifarArrays | FileIndex):
        ds = _indexed_examples(config, data, train, batching, start, count, epoch)
    else:
        ds = _streamed_examples(config, data, train, batching, start, count, epoch, input_context)
    ds = ds.batch(batching.batch, drop_remainder=train)
    if isinstance(data, CifarArrays):
        return ds
    limits = config.image_limits
    if isinstance(data, FileIndex):
        reader = unreadable.file_reader(limits)
    else:  # the encoded bytes of TFRecords
        reader = (tf.identity, lambda data: decode.check_image(data, limits))
    transform, standin = _imagenet_transform(config, train), _standin(config, train)
    ds = unreadable.decode_batches(ds, reader, transform, standin, train)
    if not train:
        return ds
    # The color work of a whole batch at once (transforms.apply_color).
    return ds.map(
        lambda out, labels: (transforms.apply_color(*out), labels),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )


def _padded(ds, count, total, batch, config):
    """Fills the last, partial batch of `count` examples and adds whole batches up to `total`
    examples, with zero images labelled -1."""
    shape = _example_shape(config, False)

    def fill(images, labels):
        missing = batch - tf.shape(labels)[0]
        images = tf.concat([images, tf.zeros([missing, *shape])], axis=0)
        labels = tf.concat([labels, tf.fill([missing], -1)], axis=0)
        return tf.ensure_shape(images, [batch, *shape]), tf.ensure_shape(labels, [batch])

    pad = (tf.zeros([batch, *shape]), tf.fill([batch], -1))
    extra = total // batch - -(-count // batch)
    return ds.map(fill).concatenate(tf.data.Dataset.from_tensors(pad).repeat(extra))


def _num_steps(config, split, num_examples, global_batch_size, skip_batches):
    """Steps of a train epoch (whole batches) or of an eval pass (the last one padded)."""
    if split == "train":
        steps = num_examples // global_batch_size
    else:
        steps = -(-num_examples // global_batch_size)
    if steps == 0:
        raise ValueError(
            f"The {split} split of {config.dataset} at data_dir={config.data_dir!r} has "
            f"{num_examples} examples; training needs at least "
            f"global_batch_size={global_batch_size}, evaluation at least 1."
        )
    if not 0 <= skip_batches <= steps:
        raise ValueError(
            f"skip_batches must be in [0, {steps}] for this epoch; "
            f"received skip_batches={skip_batches}."
        )
    return steps


def build_dataset(
    config: DataConfig,
    split: str,
    global_batch_size: int,
    input_context: tf.distribute.InputContext | None = None,
    epoch: int = 0,
    skip_batches: int = 0,
) -> tf.data.Dataset:
    """Builds one epoch (train) or one pass (eval) of batches.

    Args:
        config: DataConfig.
        split: "train" or "eval".
        global_batch_size: Examples per step over all replicas.
        input_context: From tf.distribute's distribute_datasets_from_function; this pipeline
            then yields batches of global_batch_size / num_replicas_in_sync for its replicas.
        epoch: Selects the shuffling order and the augmentation draws (train).
        skip_batches: Steps already done; the dataset starts at step skip_batches of the epoch
            without decoding the skipped images.

    Returns:
        Dataset of (images float32 [b, H, W, 3] normalized, labels int32 [b]) with static
        shapes. train: floor(num_train / global_batch_size) steps, shuffled. eval: every
        example once in file order, the last step padded with label -1 (zero images);
        ten_crop gives images [b, 10, H, W, 3].

    Raises:
        ValueError: Bad split, batch size, replica batching, skip_batches, or too small a split.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split; received split={split!r}; expected one of {SPLITS}.")
    batching = _batch_split(global_batch_size, input_context)
    source = load_source(config.dataset, config.data_dir)
    num_examples = source.num_examples(split)
    train = split == "train"
    steps = _num_steps(config, split, num_examples, global_batch_size, skip_batches)
    data = source.splits[split]
    if isinstance(data, SyntheticSplit):
        ds = _synthetic(
            config, source.num_classes, batching, steps, skip_batches, num_examples, train
        )
    else:
        start, total = skip_batches * batching.width, (steps - skip_batches) * batching.width
        count = total if train else batching.local_count(num_examples, steps, skip_batches)
        ds = _batches(config, data, train, batching, start, count, epoch, input_context)
        if not train:
            ds = _padded(ds, count, total, batching.batch, config)
            ds = ds.cache() if config.cache else ds
    # TFDS filtering and cycling hide the length; state it so len(ds) and progress bars work.
    batches = (steps - skip_batches) * batching.width // batching.batch
    ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    options = tf.data.Options()
    options.deterministic = True
    return ds.prefetch(AUTOTUNE).with_options(options)
