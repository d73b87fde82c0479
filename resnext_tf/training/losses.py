"""Training loss: softmax cross-entropy, optionally with label smoothing."""

import tensorflow as tf


def cross_entropy(labels, logits, label_smoothing=0.0):
    """Per-example softmax cross-entropy against labels smoothed by `label_smoothing`.

    The smoothed target puts 1 - eps + eps / K on the label and eps / K on each of the K
    classes (Szegedy et al. 2016; the convention of torch.nn.CrossEntropyLoss and Keras), so
    the loss is (1 - eps) * CE(label) + eps * mean over classes of -log p. With eps = 0 it is
    exactly tf.nn.sparse_softmax_cross_entropy_with_logits, the original recipe's loss.

    Args:
        labels: [batch] int class indices.
        logits: [batch, K] float32 logits.
        label_smoothing: eps in [0, 1).

    Returns:
        [batch] float32 losses.
    """
    if not label_smoothing:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    log_probs = tf.nn.log_softmax(logits)
    label_term = -tf.gather(log_probs, tf.cast(labels, tf.int32), axis=1, batch_dims=1)
    uniform_term = -tf.reduce_mean(log_probs, axis=-1)
    return (1.0 - label_smoothing) * label_term + label_smoothing * uniform_term
