"""Per-batch classification statistics and their conversion to the original's error figures.

A batch is summarised by one float32 vector of sums, [loss, top-1 correct, top-5 correct,
count], so that replicas, steps and workers combine by plain addition and the running sums can
live in a checkpointed variable.
"""

import dataclasses

import tensorflow as tf

NUM_STATS = 4
LOSS, TOP1, TOP5, COUNT = range(NUM_STATS)
TOP_K = 5  # the original reports top-1 and top-5 error


def batch_stats(logits, labels):
    """Sums of loss and correct predictions over the valid examples of a batch.

    Args:
        logits: [batch, classes] float logits.
        labels: [batch] int labels; negative labels mark padding and are ignored.

    Returns:
        float32 [4] vector: summed cross-entropy, top-1 hits, top-5 hits, valid examples.
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    valid = labels >= 0
    safe = tf.where(valid, labels, tf.zeros_like(labels))
    weight = tf.cast(valid, tf.float32)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
    k = min(TOP_K, logits.shape[-1])
    hits = [tf.cast(tf.math.in_top_k(safe, logits, n), tf.float32) for n in (1, k)]
    return tf.stack(
        [
            tf.reduce_sum(tf.where(valid, loss, 0.0)),
            tf.reduce_sum(hits[0] * weight),
            tf.reduce_sum(hits[1] * weight),
            tf.reduce_sum(weight),
        ]
    )


@dataclasses.dataclass(frozen=True)
class Errors:
    """Mean loss and top-1 / top-5 error in percent, as the original prints them."""

    loss: float
    top1: float
    top5: float
    count: int

    @classmethod
    def from_sums(cls, sums):
        """Builds the summary from a stats vector (numpy or list) of summed batches."""
        count = float(sums[COUNT])
        if count == 0:
            return cls(float("nan"), float("nan"), float("nan"), 0)
        return cls(
            loss=float(sums[LOSS]) / count,
            top1=100.0 * (1.0 - float(sums[TOP1]) / count),
            top5=100.0 * (1.0 - float(sums[TOP5]) / count),
            count=int(count),
        )
