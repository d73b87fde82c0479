"""Decoding batches of image files where any file may be unreadable, damaged or a bomb.

An example whose file cannot be read, decoded or transformed is replaced within its batch (the
next candidate file, else a grey stand-in), with one warning line naming the file and the
reason, so an epoch never dies on one image and its length and positions never shift.
"""

import errno
import sys

import tensorflow as tf

from resnext_tf import fileio
from resnext_tf.data import decode


def map_ignoring_errors(elements, fn, num_parallel_calls=None):
    """Applies `fn` to each element of `elements`, keeping the outputs of those it accepts.

    The elements (a tuple of tensors, sliced along their first axis) run in a dataset of their
    own, whose ignore_errors() drops the ones on which `fn` raises: the way to survive a
    damaged image inside a graph.

    Returns:
        One batch of the outputs of the elements that succeed, in order; the empty batch when
        none does.
    """
    ds = tf.data.Dataset.from_tensor_slices(elements)
    if num_parallel_calls is None:
        ds = ds.map(fn)
    else:
        ds = ds.map(fn, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.ignore_errors()
    empty = tf.nest.map_structure(
        lambda s: tf.zeros([0, *(0 if d is None else d for d in s.shape)], s.dtype),
        ds.element_spec,
    )
    count = tf.shape(tf.nest.flatten(elements)[0], out_type=tf.int64)[0]
    ds = ds.batch(tf.maximum(count, 1))
    return ds.concatenate(tf.data.Dataset.from_tensors(empty)).take(1).get_single_element()


def _transformed(slots, seeds, sources, labels, fetch, transform):
    """Transforms the given candidates; returns (slots, outputs, labels) of those that decode,
    dropping the ones that fail to be read, decoded or transformed."""
    return map_ignoring_errors(
        (slots, seeds, sources, labels),
        lambda k, seed, source, y: (k, transform(fetch(source), seed), y),
    )


def _missing(size, found_slots):
    """The slots in 0 .. size - 1 that are in none of `found_slots`."""
    found = tf.concat(found_slots, axis=0)
    count = tf.scatter_nd(found[:, None], tf.ones_like(found), [size])
    return tf.cast(tf.where(count == 0)[:, 0], tf.int32)


# Why a file was replaced when neither its reader nor decode.check_image says why.
UNREADABLE = "cannot be read or decoded"


def _read_image_file(path, max_bytes):
    """(bytes, "") of the image file `path`, or (b"", why it is not read).

    tf.io.read_file reads a file whole, whatever its size, before check_image can refuse it,
    and blocks forever on a FIFO (`resnext_tf.fileio.read_limited` checks first).
    """
    try:
        return fileio.read_limited(path, max_bytes), ""
    except OSError as e:
        limited = e.errno in (errno.EINVAL, errno.EFBIG)
        return b"", e.strerror if limited else f"cannot be read ({e.strerror or e})"


def file_reader(limits):
    """(fetch, describe) of image files: fetch gives a file's bytes and fails on a file that
    `_read_image_file` does not read; describe gives why a file is refused ("" if it is not)."""

    def read_file(path):  # bytes in a graph, a 0-d array of bytes when run eagerly
        return _read_image_file(path if isinstance(path, bytes) else path.item(), limits.max_bytes)

    def read(path):
        data, reason = tf.numpy_function(
            read_file,
            [path],
            [tf.string, tf.string],
            stateful=False,
        )
        return tf.ensure_shape(data, []), tf.ensure_shape(reason, [])

    def fetch(path):
        data, reason = read(path)
        with tf.control_dependencies([tf.debugging.Assert(tf.equal(reason, ""), [reason])]):
            return tf.identity(data)

    def describe(path):
        data, reason = read(path)
        return tf.cond(
            tf.equal(reason, ""), lambda: decode.check_image(data, limits), lambda: reason
        )

    return fetch, describe


def _reasons(size, slots, sources, describe):
    """Why the files `sources` of the given slots were refused, as a string [size] indexed by
    slot: describe's reason, else UNREADABLE."""
    checked, reasons = map_ignoring_errors(
        (slots, sources), lambda k, source: (k, describe(source))
    )
    reasons = tf.where(tf.equal(reasons, ""), UNREADABLE, reasons)
    return tf.tensor_scatter_nd_update(tf.fill([size], UNREADABLE), checked[:, None], reasons)


def _warning(names, slots, replacement, reasons):
    first = tf.gather(names[:, 0], slots)
    return tf.strings.join(
        [
            'resnext_tf.data WARNING: unreadable image "',
            first,
            replacement,
            ": ",
            tf.gather(reasons, slots),
        ]
    )


def _replace_unreadable(batch, found, reader, transform, standin, train):
    """Fills the slots of `batch` that `found` lacks: with the next candidate that decodes,
    else with the stand-in; prints one warning line per replaced example, with the reason."""
    (fetch, describe), (seeds, names, sources, labels) = reader, batch
    size = tf.shape(seeds)[0]
    missing = _missing(size, [found[0]])
    reasons = _reasons(size, missing, tf.gather(sources[:, 0], missing), describe)
    parts, warnings = [found], []
    for k in range(1, sources.shape[1]):
        missing = _missing(size, [part[0] for part in parts])
        part = _transformed(
            missing,
            tf.gather(seeds, missing),
            tf.gather(sources[:, k], missing),
            tf.gather(labels[:, k], missing),
            fetch,
            transform,
        )
        replacement = tf.strings.join(['" replaced by "', tf.gather(names[:, k], part[0]), '"'])
        warnings.append(_warning(names, part[0], replacement, reasons))
        parts.append(part)
    missing = _missing(size, [part[0] for part in parts])
    count = tf.size(missing)
    grey = tf.nest.map_structure(lambda t: tf.broadcast_to(t, [count, *t.shape]), standin)
    grey_labels = tf.gather(labels[:, 0], missing) if train else tf.fill([count], -1)
    parts.append((missing, grey, grey_labels))
    warnings.append(_warning(names, missing, '" replaced by a grey image', reasons))
    message = tf.strings.reduce_join(tf.concat(warnings, axis=0), separator="\n")
    # Runs only for batches with an unreadable file; tf.print keeps Python out of the pipeline.
    with tf.control_dependencies([tf.print(message, output_stream=sys.stderr)]):
        order = tf.argsort(tf.concat([part[0] for part in parts], axis=0))
    return tf.nest.map_structure(
        lambda *pieces: tf.gather(tf.concat(pieces, axis=0), order),
        *[part[1:] for part in parts],
    )


def decode_batches(ds, reader, transform, standin, train):
    """Decodes batches of examples, replacing an example whose file cannot be read or decoded.

    Elements of `ds` are batches of (seed [b, 2], names [b, C], sources [b, C], labels [b, C]):
    C candidates per example, the example's own file first, then its stand-ins. An example
    takes the first candidate that `reader`'s fetch + transform accept (`reader`: fetch and
    describe, as file_reader returns them); if none does, a grey image with
    the example's label (label -1 in evaluation). Every slot of a batch thus holds exactly one
    example, so epoch lengths and positions never shift. The candidates of a batch are tried
    together in one inner dataset: the rare batch with a failure pays for the replacement.

    Returns:
        Batches of (transform outputs, labels).
    """

    def decode(*batch):
        seeds, _, sources, labels = batch
        size = tf.shape(seeds)[0]
        fetch = reader[0]
        found = _transformed(tf.range(size), seeds, sources[:, 0], labels[:, 0], fetch, transform)
        out = tf.cond(
            tf.size(found[0]) == size,
            lambda: found[1:],
            lambda: _replace_unreadable(batch, found, reader, transform, standin, train),
        )
        # Static batch size where the input has one (training drops the remainder).
        return tf.nest.map_structure(
            lambda t: tf.ensure_shape(t, seeds.shape[:1] + t.shape[1:]), out
        )

    return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
